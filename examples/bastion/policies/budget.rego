package bastion.budget

import rego.v1

# The lab's budget: any change may add at most 0.10 USD a month to what the
# bastion already costs (free-tier thinking: the experiment must stay cheap).
budget := 0.10

deny contains msg if {
	added := object.get(object.get(input.cost.by_currency, "USD", {}), "delta", 0)
	added > budget
	msg := sprintf("this change adds %.2f USD a month; the lab's budget allows %.2f", [added, budget])
}

test_a_new_instance_is_over_budget if {
	count(deny) == 1 with input as {"cost": {"by_currency": {"USD": {"delta": 5}}}}
}

test_no_added_cost_passes if {
	count(deny) == 0 with input as {"cost": {"by_currency": {"USD": {"delta": 0}}}}
}
