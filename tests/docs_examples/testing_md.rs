//! docs/testing.md's example of a test on real hosts, compiled with the
//! suite. It boots three hosts, so it runs only with `--ignored`. From its
//! `use` line to its closing brace this file is the doc's block, but for
//! the `#[ignore]` line and the blanks rustfmt takes out before comments.
#![allow(unused_variables)]

use crate::support::testbed::Testbed;

#[test]
#[ignore = "boots three test hosts: the example of docs/testing.md"]
fn something_on_real_hosts() {
    let bed = Testbed::start(3); // 3 full hosts, systemd `running`
    let h = bed.host(0);
    // h.name, h.address (10.213.x.y), h.port (22), h.host_key ("ssh-ed25519 AAAA…")
    // bed.key: the root login key; bed.known_hosts: the pinned keys of all hosts
    let out = bed.ssh_ok(0, "systemctl is-active ssh");
    bed.reboot(1); // `systemctl reboot` inside, waits until it is back
    bed.cut_off(2); // link down: unreachable ("no route") but running
    bed.reconnect(2);
    bed.crash(2); // killed, stays down
} // dropped: everything is torn down

#[test]
fn this_file_is_the_docs_example() {
    let b = super::block("docs/testing.md", "rust", "Testbed::start(3)");
    let me = include_str!("testing_md.rs");
    let start = me.find("use crate::support").unwrap();
    let close = start + me[start..].find("\n}").unwrap() + 1;
    let end = close + me[close..].find('\n').unwrap() + 1;
    let words = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("#[ignore"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        words(&me[start..end]),
        words(&b.body),
        "{}: not the example compiled here",
        b.at()
    );
}
