package taskpool.size

import rego.v1

# The pool stays between 2 servers (tasks survive one server's maintenance)
# and 5 (the budget).
min_servers := 2

max_servers := 5

servers := count([h | some h in input.hosts; h.group == "tasks"])

deny contains msg if {
	servers > max_servers
	msg := sprintf("the task pool would have %d servers; at most %d", [servers, max_servers])
}

deny contains msg if {
	servers < min_servers
	msg := sprintf("the task pool would have %d servers; at least %d", [servers, min_servers])
}

test_six_is_too_many if {
	count(deny) == 1 with input as {"hosts": [{"group": "tasks"}, {"group": "tasks"}, {"group": "tasks"},
		{"group": "tasks"}, {"group": "tasks"}, {"group": "tasks"}]}
}

test_three_is_fine if {
	count(deny) == 0 with input as {"hosts": [{"group": "tasks"}, {"group": "tasks"}, {"group": "tasks"}]}
}
