# Deny plans that open SSH (22/tcp) in a host firewall to the whole internet,
# except on hosts labelled ssh_public: "true".
package tidekeeper.policies.no_world_ssh

import rego.v1

deny contains msg if {
	some r in input.resources
	r.type == "firewall"
	some rule in r.after.rules
	rule.action == "allow"
	rule.from_port <= 22
	rule.to_port >= 22
	rule.from in {"any", "0.0.0.0/0", "::/0"}
	not public_ssh_allowed(r.host)
	msg := sprintf("%s opens SSH to the whole internet; restrict `from` or label the host ssh_public: \"true\"", [r.address])
}

public_ssh_allowed(host) if {
	some h in input.hosts
	h.name == host
	h.labels.ssh_public == "true"
}
