//! Host keys that cannot be stolen from cloud metadata: the key a new
//! server gets in its user data (readable by anything on the server) is
//! replaced by one generated on the server, pinned in the server's label.

use crate::cloud::{BASE, HELLO};
use crate::support::cloud::{CloudFleet, cloud_init};
use crate::support::fleet::{stdout, text};
use crate::support::shell_quote;

const WEB: &str = "provider: hetzner
server: {type: cpx11, image: debian-12, location: nbg1}
roles: [base]
";

const AGENT: &str = "provider: lightsail
ssh: {user: admin, sudo: true}
server: {bundle: nano_3_0, blueprint: debian_12, zone: eu-central-1a}
roles: [base]
";

/// The ed25519 key sshd on `name` offers, as base64 (asked from inside the server).
fn offered(f: &CloudFleet, name: &str) -> String {
    let scan = f.ssh(name, "ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null");
    scan.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no key offered by {name}: {scan:?}"))
        .to_string()
}

/// (private key, base64 public key) that the server's user data carried.
fn user_data_key(f: &CloudFleet, name: &str) -> (String, String) {
    let user_data = match f.hetzner.server(name) {
        Some(s) => s.user_data,
        None => f.lightsail.instance_for(name).unwrap().user_data,
    };
    let (private, public) = cloud_init(&user_data, &[])
        .host_key
        .unwrap_or_else(|| panic!("{name}'s user data holds no host key"));
    (
        private,
        public.split_whitespace().nth(1).unwrap().to_string(),
    )
}

fn labels(f: &CloudFleet, name: &str) -> std::collections::BTreeMap<String, String> {
    match f.hetzner.server(name) {
        Some(s) => s.labels.into_iter().collect(),
        None => f
            .lightsail
            .instance_for(name)
            .unwrap()
            .tags
            .into_iter()
            .collect(),
    }
}

/// Put the user data's key back as the server's only host key, as whoever
/// read it from the metadata service could on another machine.
fn put_back(f: &CloudFleet, name: &str, private: &str, public_b64: &str) {
    f.ssh(
        name,
        &format!(
            "rm -f /etc/ssh/ssh_host_*; printf '%s\\n' {} > /etc/ssh/ssh_host_ed25519_key && \
             chmod 600 /etc/ssh/ssh_host_ed25519_key && \
             echo 'ssh-ed25519 {public_b64}' > /etc/ssh/ssh_host_ed25519_key.pub && systemctl restart ssh",
            shell_quote(private.trim_end())
        ),
    );
}

#[test]
fn a_new_servers_key_from_its_user_data_is_replaced_and_then_refused() {
    let f = CloudFleet::start(
        &[
            ("roles/base.yaml", BASE),
            ("templates/hello.j2", HELLO),
            ("hosts/web.yaml", WEB),
            ("hosts/agent.yaml", AGENT),
        ],
        "",
    );
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done = stdout(&out);
    for h in ["web", "agent"] {
        assert!(
            done.lines()
                .any(|l| l.starts_with(h) && l.contains("ok      host key update")),
            "{done}"
        );
        let (_, old) = user_data_key(&f, h);
        let now = offered(&f, h);
        assert_ne!(now, old, "{h} still offers the key of its user data");
        let l = labels(&f, h);
        assert_eq!(
            l["tidekeeper-host-key"],
            tidekeeper::cloud::hostkey::fingerprint(&now).unwrap(),
            "{h}'s label pins the key it offers"
        );
        assert_eq!(l["tidekeeper-host-key-rotated"], "true");
        assert_eq!(
            f.ssh(h, "ls /etc/ssh | grep -c '^ssh_host_' ; test -e /etc/ssh/tidekeeper-rotate || echo gone"),
            "2\ngone\n",
            "one key pair, the old one deleted"
        );
        // The known_hosts line printed is the new key's.
        assert!(done.contains(&format!("ssh-ed25519 {now}")), "{done}");
        assert!(!done.contains(&old), "{done}");
    }
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("No changes. Hosts match the configuration."),
        "a rotated key is not rotated again: {}",
        text(&out)
    );

    // A reboot does not bring the user data's key back (cloud-init writes
    // `ssh_keys` once per instance; the emulated image does the same).
    let web = f.host_of("web");
    let rotated = offered(&f, "web");
    f.cloud.power_off(web);
    f.cloud.power_on(web);
    assert_eq!(offered(&f, "web"), rotated);

    // Whoever read the user data poses as the server: refused.
    let (private, old) = user_data_key(&f, "web");
    put_back(&f, "web", &private, &old);
    assert_eq!(offered(&f, "web"), old);
    f.ssh("web", "rm /etc/tk-cloud");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("HOST KEY MISMATCH"), "{}", text(&out));
    assert_eq!(
        f.ssh("web", "test -e /etc/tk-cloud && echo yes || echo no"),
        "no\n",
        "nothing ran on the impostor"
    );
}

#[test]
fn a_failed_rotation_leaves_the_old_key_working_and_says_why() {
    let f = CloudFleet::start(
        &[
            ("roles/base.yaml", BASE),
            ("templates/hello.j2", HELLO),
            ("hosts/web.yaml", WEB),
        ],
        "",
    );
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // As a server made by an older tidekeeper: the user data's key, labelled.
    let (private, old) = user_data_key(&f, "web");
    put_back(&f, "web", &private, &old);
    {
        let mut a = f.hetzner.account.lock().unwrap();
        let s = a.servers.values_mut().find(|s| s.name == "web").unwrap();
        s.labels.remove("tidekeeper-host-key-rotated");
        s.labels.insert(
            "tidekeeper-host-key".into(),
            tidekeeper::cloud::hostkey::fingerprint(&old).unwrap(),
        );
    }
    let out = f.tk(&["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = stdout(&out);
    assert!(plan.contains("~ web server (Hetzner, update)"), "{plan}");
    assert!(
        plan.contains(
            "host key: the key cloud-init installed (readable in the user data) → a key generated on the server"
        ),
        "{plan}"
    );

    // sshd -t fails: nothing is switched.
    f.ssh(
        "web",
        "echo 'NoSuchOption yes' > /etc/ssh/sshd_config.d/broken.conf",
    );
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("web              FAILED  host key update"),
        "{all}"
    );
    assert!(all.contains("sshd -t rejects the configuration"), "{all}");
    assert!(all.contains("NoSuchOption"), "names what sshd said: {all}");
    assert!(all.contains("the old key stays in place"), "{all}");
    assert_eq!(offered(&f, "web"), old);
    assert!(
        !labels(&f, "web").contains_key("tidekeeper-host-key-rotated"),
        "nothing recorded"
    );
    assert_eq!(
        f.ssh(
            "web",
            "test -e /etc/ssh/tidekeeper-rotate && echo left || echo clean"
        ),
        "clean\n"
    );
    // The old key still lets tidekeeper in; fixed, the next apply rotates.
    f.ssh("web", "rm /etc/ssh/sshd_config.d/broken.conf");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = offered(&f, "web");
    assert_ne!(now, old);
    assert_eq!(
        labels(&f, "web")["tidekeeper-host-key"],
        tidekeeper::cloud::hostkey::fingerprint(&now).unwrap()
    );
}
