package podex.workspaces

import rego.v1

# Workspace servers come in one size, so placement stays simple.
deny contains msg if {
	some r in input.resources
	r.type == "server"
	startswith(r.host, "workspace-")
	r.after.size != "cax41"
	msg := sprintf("%s must be a cax41 like the other workspace servers, not %s", [r.address, r.after.size])
}

test_other_sizes_are_denied if {
	count(deny) == 1 with input as {"resources": [{"address": "workspace-3 server", "host": "workspace-3",
		"type": "server", "after": {"size": "cpx21"}}]}
}
