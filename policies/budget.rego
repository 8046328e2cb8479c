package tidekeeper.builtin.budget

import rego.v1

deny contains msg if {
	limit := data.tidekeeper.budget.monthly
	input.cost.proposed > limit
	msg := sprintf("monthly cost %.2f %s exceeds the budget of %.2f", [input.cost.proposed, input.cost.currency, limit])
}
