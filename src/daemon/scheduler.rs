//! The daemon's one scheduler: every trigger (poll timer, webhook, file
//! watch, drift timer, cron, retry) asks for a keyed [`Request`] at a time;
//! the scheduler keeps one entry per key (the earliest time asked for), and
//! the runner takes whatever is due. Five pokes in a row are one reconcile.
//! Time is tokio's, so tests run it under a paused clock.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// What the runner is asked to look at. It never learns *why*: every
/// request is "look again" for its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Request {
    /// Fetch; apply the branch head if it is new (or must be retried).
    Head,
    /// Plan the last good commit against the hosts; correct if configured.
    Drift,
    /// Plan proposals whose heads are new.
    Proposals,
    /// Run a maintenance job at its due time.
    Job(String),
    /// Run a maintenance job now, whatever its schedule (`POST /jobs/NAME/run`).
    RunJob(String),
}

impl Request {
    pub fn label(&self) -> &'static str {
        match self {
            Request::Head => "head",
            Request::Drift => "drift",
            Request::Proposals => "proposals",
            Request::Job(_) | Request::RunJob(_) => "job",
        }
    }
}

#[derive(Default)]
pub struct Scheduler {
    due: Mutex<BTreeMap<Request, Instant>>,
    changed: Notify,
}

impl Scheduler {
    /// Ask for `r` at `at`; an earlier request for the same key wins.
    pub fn at(&self, r: Request, at: Instant) {
        let mut due = self.due.lock().unwrap();
        let e = due.entry(r).or_insert(at);
        if at < *e {
            *e = at;
        }
        drop(due);
        self.changed.notify_one();
    }

    /// Ask for `r` now.
    pub fn now(&self, r: Request) {
        self.at(r, Instant::now());
    }

    /// Ask for `r` after `d`.
    pub fn after(&self, r: Request, d: Duration) {
        self.at(r, Instant::now() + d);
    }

    /// Ask for `r` at `at`, replacing what was asked for before (a timer
    /// moved later, e.g. drift after a fresh apply).
    pub fn reset(&self, r: Request, at: Instant) {
        self.due.lock().unwrap().insert(r, at);
        self.changed.notify_one();
    }

    /// Forget `r` (a job that left the config).
    pub fn cancel(&self, r: &Request) {
        self.due.lock().unwrap().remove(r);
    }

    /// Requests waiting, for the queue-length metric.
    pub fn len(&self) -> usize {
        self.due.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When `r` is due, if it is scheduled.
    pub fn when(&self, r: &Request) -> Option<Instant> {
        self.due.lock().unwrap().get(r).copied()
    }

    /// The next due request, removed; waits until one is due. Among several
    /// due at once, the earliest first (then in key order).
    pub async fn next(&self) -> Request {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a request made meanwhile wakes us.
            changed.as_mut().enable();
            let earliest = {
                let due = self.due.lock().unwrap();
                due.iter()
                    .min_by_key(|(k, t)| (**t, (*k).clone()))
                    .map(|(k, t)| (k.clone(), *t))
            };
            match earliest {
                Some((k, t)) if t <= Instant::now() => {
                    self.due.lock().unwrap().remove(&k);
                    return k;
                }
                Some((_, t)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// Exponential backoff with jitter per key: 2 s, 4 s, … up to `max`, each
/// scaled by a factor in [0.5, 1.0) so hosts that failed together do not
/// retry together.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: BTreeMap<Request, u32>,
}

impl Backoff {
    pub fn failed(&mut self, r: &Request, max: Duration) -> Duration {
        let n = self.failures.entry(r.clone()).or_default();
        *n += 1;
        let base = Duration::from_secs(2).saturating_mul(1 << (*n - 1).min(10));
        let capped = base.min(max);
        capped.mul_f64(0.5 + jitter(*n) / 2.0)
    }

    pub fn succeeded(&mut self, r: &Request) {
        self.failures.remove(r);
    }

    pub fn failures(&self, r: &Request) -> u32 {
        self.failures.get(r).copied().unwrap_or(0)
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter(salt: u32) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(salt);
    (h.finish() % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn scheduler_should_hold_requests_until_due_and_release_the_earliest_first() {
        let s = Scheduler::default();
        s.after(Request::Drift, Duration::from_secs(600));
        s.after(Request::Job("backup".into()), Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(s.next().await, Request::Job("backup".into()));
        assert_eq!(t.elapsed(), Duration::from_secs(60));
        assert_eq!(s.next().await, Request::Drift);
        assert_eq!(t.elapsed(), Duration::from_secs(600));
        assert!(s.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn scheduler_should_merge_five_quick_pokes_into_one_request() {
        let s = Scheduler::default();
        for _ in 0..5 {
            s.now(Request::Head);
        }
        assert_eq!(s.len(), 1);
        assert_eq!(s.next().await, Request::Head);
        let nothing = tokio::time::timeout(Duration::from_secs(3600), s.next()).await;
        assert!(nothing.is_err(), "only one Head was queued");
    }

    #[tokio::test(start_paused = true)]
    async fn scheduler_should_wake_a_waiting_runner_for_an_earlier_request() {
        let s = Arc::new(Scheduler::default());
        s.after(Request::Drift, Duration::from_secs(600));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            let t = Instant::now();
            (s2.next().await, t.elapsed())
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.now(Request::Head); // a webhook
        let (r, waited) = waiter.await.unwrap();
        assert_eq!(r, Request::Head);
        assert_eq!(waited, Duration::from_secs(5));
        assert_eq!(
            s.when(&Request::Drift).map(|t| t > Instant::now()),
            Some(true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scheduler_reset_moves_a_timer_later_and_at_keeps_the_earlier() {
        let s = Scheduler::default();
        let now = Instant::now();
        s.at(Request::Drift, now + Duration::from_secs(10));
        s.at(Request::Drift, now + Duration::from_secs(20));
        assert_eq!(s.when(&Request::Drift), Some(now + Duration::from_secs(10)));
        s.reset(Request::Drift, now + Duration::from_secs(30));
        assert_eq!(s.when(&Request::Drift), Some(now + Duration::from_secs(30)));
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let max = Duration::from_secs(60);
        let waits: Vec<Duration> = (0..8).map(|_| b.failed(&Request::Head, max)).collect();
        for (i, w) in waits.iter().enumerate() {
            let full = Duration::from_secs(2 << i).min(max);
            assert!(
                *w >= full / 2 && *w < full,
                "attempt {i}: {w:?} of {full:?}"
            );
        }
        assert_eq!(b.failures(&Request::Head), 8);
        b.succeeded(&Request::Head);
        assert_eq!(b.failures(&Request::Head), 0);
        let first = b.failed(&Request::Head, max);
        assert!(first < Duration::from_secs(2));
    }
}
