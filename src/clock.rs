//! Time as the daemon sees it. In production: the wall clock for cron,
//! windows and power periods, and tokio's clock for waits. In tests: a
//! virtual clock that runs on tokio's paused time, so a day of schedules,
//! backoff and drift checks passes in milliseconds.
//!
//! Paused time and real I/O do not mix: tokio moves a paused clock forward
//! whenever the runtime is idle, so an SSH read would "time out" at once.
//! A virtual clock therefore runs the work that talks to hosts and clouds
//! ([`Clock::io`]) on a runtime of its own with real time, from a blocking
//! task; tokio does not move paused time while a blocking task runs, so
//! virtual time stands still while hosts work and moves only when the
//! controller is idle, waiting for its next timer.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

#[derive(Clone, Default)]
pub struct Clock(Inner);

#[derive(Clone, Default)]
enum Inner {
    #[default]
    System,
    /// The wall clock moved to start at a given time (`--now`): previews of
    /// a schedule, and tests that must not depend on today's date.
    Shifted(chrono::Duration),
    Virtual(Arc<Virtual>),
}

struct Virtual {
    /// Wall time at `origin`.
    wall: DateTime<Utc>,
    origin: Instant,
    /// The runtime whose (paused) clock this is.
    controller: tokio::runtime::Handle,
    /// A real-time runtime for I/O.
    io: tokio::runtime::Handle,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::System => f.write_str("Clock::System"),
            Inner::Shifted(by) => write!(f, "Clock::Shifted({by})"),
            Inner::Virtual(v) => write!(f, "Clock::Virtual(from {})", v.wall),
        }
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Inner::System)
    }

    /// The machine's clock, or, when `TIDEKEEPER_NOW` holds an RFC 3339
    /// time, the clock starting at that time: tests of a whole daemon
    /// process must not depend on today's date.
    pub fn from_env() -> Result<Clock, String> {
        match std::env::var("TIDEKEEPER_NOW") {
            Ok(t) if !t.is_empty() => DateTime::parse_from_rfc3339(&t)
                .map(|t| Clock::starting_at(t.with_timezone(&Utc)))
                .map_err(|e| format!("TIDEKEEPER_NOW={t:?} is not an RFC 3339 time: {e}")),
            _ => Ok(Clock::system()),
        }
    }

    /// The wall clock, reading `start` now and moving in real time from there.
    pub fn starting_at(start: DateTime<Utc>) -> Clock {
        Clock(Inner::Shifted(start - Utc::now()))
    }

    /// A virtual clock reading `start` now and moving with the current
    /// runtime's (paused) tokio clock. Call it inside that runtime.
    pub fn virtual_from(start: DateTime<Utc>) -> Clock {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("clock-io".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("I/O runtime");
                tx.send(rt.handle().clone()).expect("clock handle");
                // Lives as long as the process: tests end by exiting.
                rt.block_on(std::future::pending::<()>());
            })
            .expect("I/O thread");
        Clock(Inner::Virtual(Arc::new(Virtual {
            wall: start,
            origin: Instant::now(),
            controller: tokio::runtime::Handle::current(),
            io: rx.recv().expect("I/O runtime started"),
        })))
    }

    /// Wall time now.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Inner::System => Utc::now(),
            Inner::Shifted(by) => Utc::now() + *by,
            Inner::Virtual(v) => {
                // Read the controller's clock even from an I/O thread.
                let _in = v.controller.enter();
                let passed = Instant::now().saturating_duration_since(v.origin);
                v.wall + chrono::Duration::from_std(passed).unwrap_or_default()
            }
        }
    }

    /// Wall time now, as status files write it.
    pub fn stamp(&self) -> String {
        self.now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// When wall time `t` comes, on the tokio clock (now, if it is past).
    pub fn instant_of(&self, t: DateTime<Utc>) -> Instant {
        let wait = (t - self.now()).to_std().unwrap_or_default();
        Instant::now() + wait
    }

    /// Run `work` (talking to hosts or clouds) to its end. With a virtual
    /// clock it runs with real time on the I/O runtime while virtual time
    /// stands still.
    pub async fn io<F>(&self, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Inner::System | Inner::Shifted(_) => work.await,
            Inner::Virtual(v) => {
                let io = v.io.clone();
                tokio::task::spawn_blocking(move || io.block_on(work))
                    .await
                    .expect("I/O task")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Duration;

    #[test]
    fn a_clock_starting_at_a_time_reads_that_time_and_moves_on() {
        let start = DateTime::parse_from_rfc3339("2027-02-28T23:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = Clock::starting_at(start);
        let read = c.now();
        assert!(read >= start && read - start < chrono::Duration::seconds(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_virtual_clock_moves_with_paused_time_and_io_runs_in_real_time() {
        let start = DateTime::parse_from_rfc3339("2026-03-29T00:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = Clock::virtual_from(start);
        assert_eq!(c.now(), start);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now(), start + chrono::Duration::hours(1));
        // Real work with a real timeout: a paused clock would fire it at once.
        let c2 = c.clone();
        let (inside, slept) = c
            .io(async move {
                let t = std::time::Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::time::sleep(Duration::from_millis(30)),
                )
                .await;
                (c2.now(), (r.is_ok(), t.elapsed()))
            })
            .await;
        assert!(slept.0, "the 5 s timeout did not fire early");
        assert!(slept.1 >= Duration::from_millis(30));
        assert_eq!(
            inside,
            start + chrono::Duration::hours(1),
            "virtual time stood still"
        );
        let due = c.instant_of(start + chrono::Duration::hours(3));
        assert_eq!(due - Instant::now(), Duration::from_secs(7200));
    }
}
