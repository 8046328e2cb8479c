package tidekeeper.builtin.destroy

import rego.v1

# Deleting or replacing a server ends it and its disk: only with permission
# (`allow_destroy: true` on its host, or `tidekeeper apply --allow-destroy`).
deny contains msg if {
	some r in input.resources
	r.type == "server"
	r.action in {"delete", "replace"}
	not r.before.allow_destroy
	msg := sprintf("%s would be destroyed (%s), but its host does not set allow_destroy: true", [r.address, r.action])
}

# A Lightsail resize copies the server to a new instance and deletes the old
# one: the data is kept, but the old server still ends.
deny contains msg if {
	some r in input.resources
	r.type == "server"
	r.action == "resize"
	r.new_server
	not r.before.allow_destroy
	msg := sprintf("%s would be copied to a new instance and the old one destroyed (resize), but its host does not set allow_destroy: true", [r.address])
}
