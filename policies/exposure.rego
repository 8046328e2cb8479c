package tidekeeper.builtin.exposure

import rego.v1

world := {"any", "0.0.0.0/0", "::/0"}

deny contains msg if {
	some r in input.resources
	r.type == "firewall"
	r.action != "delete"
	some rule in r.after.rules
	rule.action == "allow"
	rule.from_port <= 22
	rule.to_port >= 22
	rule.from in world
	not ssh_public(r.host)
	msg := sprintf("%s opens port 22 to the whole internet; restrict `from`, or label the host ssh_public: \"true\"", [r.address])
}

ssh_public(host) if {
	some h in input.hosts
	h.name == host
	h.labels.ssh_public == "true"
}

# The cloud firewall (Hetzner) or public ports (Lightsail) of a server.
deny contains msg if {
	some r in input.resources
	r.type == "server"
	r.action in {"create", "update", "replace", "resize"}
	some port in r.after.firewall
	port.from_port <= 22
	port.to_port >= 22
	some source in port.from
	source in world
	not ssh_public(r.host)
	msg := sprintf("%s lets port 22 in from %s at the cloud firewall; restrict `from`, or label the host ssh_public: \"true\"", [r.address, source])
}
