package tidekeeper.builtin.ssh

import rego.v1

# Effective sshd settings per host, as parsed from the managed sshd config.
deny contains msg if {
	some h in input.hosts
	lower(h.sshd.passwordauthentication) == "yes"
	msg := sprintf("%s allows SSH password login (PasswordAuthentication yes)", [h.name])
}

deny contains msg if {
	some h in input.hosts
	lower(h.sshd.permitrootlogin) == "yes"
	msg := sprintf("%s allows root login with a password (PermitRootLogin yes); use prohibit-password or no", [h.name])
}
