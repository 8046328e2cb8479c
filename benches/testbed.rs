//! Benchmark: how fast the test fleet comes up once the base image is cached.
//!
//! `cargo bench --bench testbed` (as root). Reports the time until 8 full
//! hosts (systemd `running`, SSH answering) and 100 lightweight hosts (sshd
//! answering) are ready, and the time to tear each down. Results go in
//! docs/benchmarks.md.

#[path = "../tests/support/testbed.rs"]
mod testbed;

use std::time::Instant;

use testbed::{Testbed, image};

fn main() {
    let full: usize = std::env::var("BENCH_FULL_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let light: usize = std::env::var("BENCH_LIGHT_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let t = Instant::now();
    image();
    println!(
        "base image ready (cached): {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let bed = Testbed::start(full);
    let up = t.elapsed();
    let t = Instant::now();
    drop(bed);
    println!(
        "{full} full hosts: ready in {:.1} s, torn down in {:.1} s",
        up.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let bed = Testbed::start_light(light);
    let up = t.elapsed();
    let t = Instant::now();
    drop(bed);
    println!(
        "{light} light hosts: ready in {:.1} s, torn down in {:.1} s",
        up.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
