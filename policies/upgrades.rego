package tidekeeper.builtin.upgrades

import rego.v1

warn contains msg if {
	some r in input.resources
	r.type == "file"
	r.after.path == "/etc/apt/apt.conf.d/20auto-upgrades"
	contains(r.after.content, "Unattended-Upgrade \"0\"")
	msg := sprintf("%s turns unattended upgrades off", [r.address])
}

warn contains msg if {
	some r in input.resources
	r.type == "package"
	r.after.name == "unattended-upgrades"
	r.after.state == "absent"
	msg := sprintf("%s removes unattended-upgrades", [r.address])
}
