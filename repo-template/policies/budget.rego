# Warn when the fleet's monthly cost grows by more than 20, deny above 200.
package tidekeeper.policies.budget

import rego.v1

monthly_budget := 200

deny contains msg if {
	input.cost.proposed > monthly_budget
	msg := sprintf("monthly cost %.2f %s exceeds the budget of %d", [input.cost.proposed, input.cost.currency, monthly_budget])
}

warn contains msg if {
	input.cost.delta > 20
	msg := sprintf("this change adds %.2f %s per month", [input.cost.delta, input.cost.currency])
}
