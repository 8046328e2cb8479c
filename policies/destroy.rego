package tidekeeper.builtin.destroy

import rego.v1

deny contains msg if {
	some r in input.resources
	r.type == "server"
	r.action == "delete"
	not r.before.allow_destroy
	msg := sprintf("%s would be destroyed, but its host does not set allow_destroy: true", [r.address])
}
