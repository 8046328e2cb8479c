package tidekeeper.builtin.budget

import rego.v1

# The budget comes from the config repo's own policies, e.g.
#   package tidekeeper.budget
#   monthly := 0.10
#   currency := "USD"     # optional; default: the fleet's main currency

currency := data.tidekeeper.budget.currency if {
	data.tidekeeper.budget.currency
} else := input.cost.currency

proposed := object.get(input.cost.by_currency, currency, {"proposed": 0}).proposed

deny contains msg if {
	limit := data.tidekeeper.budget.monthly
	proposed > limit
	msg := sprintf("monthly cost %.2f %s exceeds the budget of %v %s", [proposed, currency, limit, currency])
}
