//! The test fleet harness itself: real hosts boot, log in with pinned keys,
//! install from the local apt repository only, reboot, and leave nothing behind.

use std::path::Path;
use std::time::Duration;

use crate::support::testbed::{Footprint, Testbed, is_mounted};

fn gone(fp: &Footprint) {
    let netns = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !netns.split_whitespace().any(|n| n == fp.netns),
        "namespace {} left behind",
        fp.netns
    );
    let link = std::process::Command::new("ip")
        .args(["link", "show", &fp.link])
        .output()
        .unwrap();
    assert!(!link.status.success(), "link {} left behind", fp.link);
    assert!(
        !is_mounted(&fp.dir.join("merged")),
        "overlay mount left behind in {}",
        fp.dir.display()
    );
    assert!(
        !fp.dir.exists(),
        "files left behind in {}",
        fp.dir.display()
    );
    for pid in &fp.pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
    }
}

#[test]
fn full_hosts_boot_log_in_install_reboot_and_fail_on_demand() {
    let bed = Testbed::start(2);
    for i in 0..2 {
        let state = bed.ssh_ok(i, "systemctl is-system-running");
        assert_eq!(state.trim(), "running");
        assert_eq!(bed.ssh_ok(i, "hostname").trim(), bed.host(i).name);
        assert_eq!(bed.ssh_ok(i, "systemctl is-active ssh").trim(), "active");
    }
    // The host key served is the one the harness generated and pinned.
    let served = bed.ssh_ok(0, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert!(served.starts_with(&bed.host(0).host_key), "{served}");
    assert_ne!(
        bed.host(0).host_key,
        bed.host(1).host_key,
        "each host has its own key"
    );

    // A wrong pinned key is refused by the client.
    let wrong = bed.dir().join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!("{} {}\n", bed.host(0).address, bed.host(1).host_key),
    )
    .unwrap();
    let out = std::process::Command::new("ssh")
        .args([
            "-i",
            bed.key.to_str().unwrap(),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg(format!("-oUserKnownHostsFile={}", wrong.display()))
        .arg(format!("root@{}", bed.host(0).address))
        .arg("true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Packages come from the local repository; there is no other source and no route out.
    bed.ssh_ok(0, "apt-get install -y -q jq >/dev/null");
    assert_eq!(bed.ssh_ok(0, "echo '{\"a\": 7}' | jq .a").trim(), "7");
    let sources = bed.ssh_ok(
        0,
        "cat /etc/apt/sources.list.d/*.list; ls /etc/apt/sources.list 2>/dev/null || true",
    );
    assert_eq!(sources.trim(), "deb [trusted=yes] file:/srv/tk-apt ./");
    let routes = bed.ssh_ok(0, "ip route");
    assert!(!routes.contains("default"), "no default route: {routes}");
    assert!(
        !bed.ssh(0, "timeout 3 bash -c 'echo > /dev/tcp/151.101.2.132/80'")
            .status
            .success()
    );

    // Hosts reach each other over the test network.
    let other = bed.host(1).address;
    bed.ssh_ok(
        0,
        &format!("timeout 5 bash -c 'echo > /dev/tcp/{other}/22'"),
    );

    // A reboot from inside brings the same host back, with what was installed.
    let boot = bed.boot_id(0);
    bed.reboot(0);
    assert_ne!(bed.boot_id(0), boot);
    assert_eq!(
        bed.ssh_ok(0, "systemctl is-system-running").trim(),
        "running"
    );
    assert!(bed.ssh_ok(0, "command -v jq").contains("/usr/bin/jq"));

    // Cut off: unreachable, then back.
    bed.cut_off(1);
    assert!(!bed.ssh(1, "true").status.success());
    bed.reconnect(1);
    bed.wait_ready(1, Duration::from_secs(30));

    // Crashed: gone for good.
    bed.crash(1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!bed.ssh(1, "true").status.success());
}

#[test]
fn teardown_leaves_nothing_behind() {
    let bed = Testbed::start(1);
    let fp = bed.host(0).footprint();
    assert!(
        !fp.pids.is_empty(),
        "the host runs processes in its namespace"
    );
    assert!(is_mounted(&fp.dir.join("merged")));
    drop(bed);
    gone(&fp);
}

#[test]
fn a_panicking_test_still_tears_down() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let bed = Testbed::start_light(1);
        tx.send(bed.host(0).footprint()).unwrap();
        panic!("test failure inside a testbed");
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let fp = rx.recv().unwrap();
    assert!(!fp.pids.is_empty());
    gone(&fp);
}

#[test]
fn light_hosts_serve_ssh_with_their_own_keys() {
    let bed = Testbed::start_light(4);
    for i in 0..4 {
        assert_eq!(bed.ssh_ok(i, "hostname").trim(), bed.host(i).name);
        // Writes land in a throwaway overlay, never in the shared base image.
        bed.ssh_ok(i, "echo scratch > /etc/tk-scratch");
    }
    assert!(
        !crate::support::testbed::image()
            .join("rootfs/etc/tk-scratch")
            .exists()
    );
}
