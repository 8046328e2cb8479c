//! Docker compose stacks on a test host that runs dockerd.

use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::{Kind, Testbed};

/// Debian's docker in a test host: the cgroup v1 controllers come mounted
/// read-only inside the container; remount them (see docs/testing.md).
pub(crate) const DOCKER_PREP: &str = "for d in /sys/fs/cgroup/*/; do d=${d%/}; [ -L \"$d\" ] && continue; n=$(basename $d); \
    case $n in systemd|unified) continue;; esac; mount -o remount,rw \"$d\" 2>/dev/null || \
    { umount -l \"$d\" && mount -t cgroup -o \"$n\" cgroup \"$d\"; }; done; \
    systemctl restart docker && mkdir -p /tmp/bb/bin && cp /bin/busybox /tmp/bb/bin/ && \
    for a in sh httpd sleep dmesg; do ln -sf busybox /tmp/bb/bin/$a; done && \
    tar -C /tmp/bb -c . | docker import - local/busybox:1 >/dev/null";

const ROLE: &str =
    "packages:\n  present: [docker.io, docker-compose, busybox-static]\nstacks:\n  - name: web\n";

fn compose(port: u16) -> String {
    format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: local/busybox:1\n    command: [\"httpd\", \"-f\", \"-p\", \"{port}\"]\n    network_mode: host\n"
    )
}

#[test]
fn a_compose_stack_is_brought_up_corrected_after_drift_and_taken_down() {
    compose_stack_lifecycle(Kind::Docker);
}

/// Debian 13's docker.io and docker-compose.
#[test]
fn on_debian_13_too_a_compose_stack_is_brought_up_corrected_and_taken_down() {
    compose_stack_lifecycle(Kind::TrixieDocker);
}

fn compose_stack_lifecycle(kind: Kind) {
    let bed = Testbed::start_kind(1, kind);
    // Debian 13 ships the docker command in a package of its own.
    let packages = if kind == Kind::TrixieDocker {
        "packages:\n  present: [docker.io, docker-cli, docker-compose, busybox-static]\n"
    } else {
        "packages:\n  present: [docker.io, docker-compose, busybox-static]\n"
    };
    let repo = FleetRepo::minimal(&bed, &[("docker", packages)]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    bed.ssh_ok(0, DOCKER_PREP);

    repo.write(
        "roles/docker.yaml",
        &format!("{packages}stacks:{}", ROLE.split_once("stacks:").unwrap().1),
    );
    repo.write("stacks/web/docker-compose.yml", &compose(8080));
    repo.commit("web stack");
    let out = repo.tk(&["plan"]);
    let plan = stdout(&out);
    assert!(
        plan.contains("file /opt/stacks/web/docker-compose.yml")
            && plan.contains("+    command: [\"httpd\", \"-f\", \"-p\", \"8080\"]"),
        "{plan}"
    );
    assert!(
        plan.contains("stack web  docker compose up (first deploy)"),
        "{plan}"
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let up = || {
        bed.ssh_ok(
            0,
            "docker ps --filter label=com.docker.compose.project=web --format '{{.State}}'",
        )
    };
    assert_eq!(up().trim(), "running");
    let answer = bed.ssh_ok(
        0,
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && head -1 <&3'",
    );
    assert!(
        answer.starts_with("HTTP/1."),
        "busybox httpd in the stack answers: {answer:?}"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Drift: the container stopped by hand.
    bed.ssh_ok(
        0,
        "docker stop $(docker ps -q --filter label=com.docker.compose.project=web) >/dev/null",
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stdout(&out).contains("not running: web (exited)"),
        "{}",
        text(&out)
    );
    assert_eq!(repo.tk(&["apply", "--yes"]).status.code(), Some(0));
    assert_eq!(up().trim(), "running");

    // A changed compose file recreates the service.
    repo.write("stacks/web/docker-compose.yml", &compose(8081));
    repo.commit("port 8081");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cmd = bed.ssh_ok(0, "docker inspect --format '{{json .Config.Cmd}}' $(docker ps -q --filter label=com.docker.compose.project=web)");
    assert!(cmd.contains("8081"), "{cmd}");

    // Removed from the config: down, files pruned.
    repo.write("roles/docker.yaml", packages);
    repo.commit("no stack");
    // Three of six managed resources go: more than a quarter needs permission.
    let out = repo.tk(&["apply", "--yes", "--allow-mass-delete"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(
            0,
            "docker ps -aq --filter label=com.docker.compose.project=web | wc -l"
        )
        .trim(),
        "0"
    );
    assert!(
        !bed.ssh(0, "test -e /opt/stacks/web").status.success(),
        "files and directory pruned"
    );
}

#[test]
fn the_templates_docker_role_makes_gvisor_the_default_runtime() {
    let bed = Testbed::start_kind(1, Kind::Docker);
    let repo = FleetRepo::template(&bed, &["docker-gvisor"]);
    // Inside a test host this Debian runsc needs host networking and no cgroups.
    let h = format!("hosts/{}.yaml", bed.host(0).name);
    let t = repo.read(&h);
    repo.write(
        &h,
        &format!("{t}vars:\n  docker_default_runtime: runsc\n  runsc_args: [\"--network=host\", \"--ignore-cgroups\"]\n"),
    );
    repo.commit("gvisor by default");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    bed.ssh_ok(
        0,
        DOCKER_PREP
            .replace(
                "systemctl restart docker",
                "apt-get install -y -qq busybox-static >/dev/null && systemctl restart docker",
            )
            .as_str(),
    );
    let conf: serde_json::Value =
        serde_json::from_str(&bed.ssh_ok(0, "cat /etc/docker/daemon.json")).unwrap();
    assert_eq!(conf["default-runtime"], "runsc");
    assert_eq!(conf["icc"], false);
    assert_eq!(conf["no-new-privileges"], true);
    assert_eq!(
        bed.ssh_ok(0, "docker info --format '{{.DefaultRuntime}}'")
            .trim(),
        "runsc"
    );
    let dmesg = bed.ssh_ok(0, "docker run --rm local/busybox:1 dmesg");
    assert!(
        dmesg.contains("gVisor") || dmesg.contains("Ready!"),
        "the container runs under gVisor: {dmesg}"
    );
    // The daemon is restarted only when its configuration changes.
    let pid = bed.ssh_ok(0, "systemctl show -p MainPID --value docker");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(0, "systemctl show -p MainPID --value docker"),
        pid,
        "no restart without a change"
    );
}

fn two_services(port: u16) -> String {
    format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: local/busybox:1\n    command: [\"httpd\", \"-f\", \"-p\", \"{port}\", \"-h\", \"/bin\"]\n    network_mode: host\n  \
         worker:\n    image: local/busybox:1\n    command: [\"sleep\", \"100000\"]\n"
    )
}

fn stack_role(port: u16, extra_gate: &str) -> String {
    format!(
        "packages:\n  present: [docker.io, docker-compose, busybox-static, curl]\nstacks:\n  - name: web\n    health:\n      \
         - container: web\n      - container: worker\n      - http: http://127.0.0.1:{port}/busybox\n{extra_gate}"
    )
}

#[test]
fn of_two_services_only_the_changed_one_is_recreated_image_drift_is_corrected_and_health_gates_hold()
 {
    let bed = Testbed::start_kind(1, Kind::Docker);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "docker",
            "packages:\n  present: [docker.io, docker-compose, busybox-static, curl]\n",
        )],
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    bed.ssh_ok(0, DOCKER_PREP);
    bed.ssh_ok(0, "docker tag local/busybox:1 local/busybox:2");
    let id = |svc: &str| {
        bed.ssh_ok(
            0,
            &format!("docker ps -q --no-trunc --filter label=com.docker.compose.project=web --filter label=com.docker.compose.service={svc}"),
        )
        .trim()
        .to_string()
    };

    repo.write("roles/docker.yaml", &stack_role(8080, ""));
    repo.write("stacks/web/docker-compose.yml", &two_services(8080));
    repo.commit("two services");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (web, worker) = (id("web"), id("worker"));
    assert!(!web.is_empty() && !worker.is_empty(), "both services run");

    // A new port for web: the plan names it, and only web is recreated.
    repo.write("roles/docker.yaml", &stack_role(8081, ""));
    repo.write("stacks/web/docker-compose.yml", &two_services(8081));
    repo.commit("web on 8081");
    let out = repo.tk(&["plan"]);
    assert!(
        stdout(&out).contains("+ recreates service: web"),
        "{}",
        text(&out)
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(id("web"), web, "web recreated");
    assert_eq!(id("worker"), worker, "worker untouched");

    // Someone runs worker on another image by hand: drift, corrected.
    bed.ssh_ok(
        0,
        "cd /opt/stacks/web && sed 's/local\\/busybox:1/local\\/busybox:2/' docker-compose.yml > /tmp/c.yml && \
         docker-compose -p web -f /tmp/c.yml up -d worker 2>/dev/null",
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "image changed: worker runs local/busybox:2, the config says local/busybox:1"
        ),
        "{}",
        text(&out)
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let image = bed.ssh_ok(
        0,
        &format!("docker inspect -f '{{{{.Config.Image}}}}' {}", id("worker")),
    );
    assert_eq!(image.trim(), "local/busybox:1");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A gate that cannot pass fails the apply, naming it.
    repo.write(
        "roles/docker.yaml",
        &stack_role(
            8081,
            "      - http: http://127.0.0.1:9/\n        timeout: 3s\n",
        ),
    );
    repo.write("stacks/web/.env", "TOUCH=1\n");
    repo.commit("a gate that fails");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("health gate failed after 3s: HTTP http://127.0.0.1:9/"),
        "{}",
        text(&out)
    );
}
