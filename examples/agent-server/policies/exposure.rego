package outpost.exposure

import rego.v1

# The dispatcher takes tasks that run code: never open it to the world.
deny contains msg if {
	some r in input.resources
	r.type == "server"
	some port in r.after.firewall
	port.from_port <= 8700
	port.to_port >= 8700
	some source in port.from
	source in {"0.0.0.0/0", "::/0"}
	msg := sprintf("%s opens the dispatcher port to %s", [r.address, source])
}

test_world_open_dispatcher_is_denied if {
	count(deny) == 1 with input as {"resources": [{"address": "outpost server", "type": "server",
		"after": {"firewall": [{"from_port": 8700, "to_port": 8700, "from": ["0.0.0.0/0"]}]}}]}
}

test_operator_only_passes if {
	count(deny) == 0 with input as {"resources": [{"address": "outpost server", "type": "server",
		"after": {"firewall": [{"from_port": 8700, "to_port": 8700, "from": ["198.51.100.7/32"]}]}}]}
}
