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
    /// `tidekeeper retry`: fetch and apply the head even if it is quarantined
    /// or held, accepting its plan as it is now.
    Retry,
    /// Plan the last good commit against the hosts; correct if configured.
    Drift,
    /// Fetch the proposal refs; ask for each one whose head is new.
    Proposals,
    /// Plan one proposal ref's head (and send its report).
    Proposal(String),
    /// Run a maintenance job at its due time.
    Job(String),
    /// Run a maintenance job now, whatever its schedule (`POST /jobs/NAME/run`).
    RunJob(String),
}

impl Request {
    pub fn label(&self) -> &'static str {
        match self {
            Request::Head => "head",
            Request::Retry => "retry",
            Request::Drift => "drift",
            Request::Proposals | Request::Proposal(_) => "proposals",
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

    /// Requests scheduled, due or not.
    pub fn len(&self) -> usize {
        self.due.lock().unwrap().len()
    }

    /// Requests due now and not yet taken (the queue-length metric): a
    /// timer set for later is not work waiting.
    pub fn due_now(&self) -> usize {
        let now = Instant::now();
        self.due
            .lock()
            .unwrap()
            .values()
            .filter(|t| **t <= now)
            .count()
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

/// What a request that went well asks of the scheduler next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Nothing: its next trigger (a due time, a poke) asks again.
    Done,
    /// Look again after this long (the poll or drift interval).
    After(Duration),
}

/// Why a request must be tried again: the error policy turns it into a wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Again {
    /// The config repo could not be fetched.
    #[error("the config repo could not be fetched")]
    Fetch,
    /// The commit reached only some hosts: the others were unreachable or busy.
    #[error("{unreachable} host(s) unreachable, {busy} busy")]
    Hosts { unreachable: usize, busy: usize },
    /// The forge did not take a report (it is kept).
    #[error("the forge did not take the report")]
    Forge,
}

impl Again {
    /// The error policy: (first wait, longest wait) of the backoff, and
    /// whether the request's regular interval still runs meanwhile. A remote
    /// that is down is asked less often than the poll; hosts that were not
    /// reached are tried again sooner, and the poll for new commits goes on.
    pub fn policy(&self, interval: Duration) -> (Duration, Duration, bool) {
        let max = Duration::from_secs(300);
        match self {
            Again::Fetch | Again::Forge => (interval.min(max), max, false),
            // Busy hosts too: the job or rollout holding them pokes when it
            // ends; the backoff is for holders that do not (another process).
            Again::Hosts { .. } => (Duration::from_secs(2), max, true),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Again::Fetch => "fetch",
            Again::Forge => "forge",
            Again::Hosts { unreachable: 0, .. } => "busy",
            Again::Hosts { .. } => "unreachable",
        }
    }
}

/// The error policy's backoff per key ([`crate::backoff::Backoff`]):
/// `first`, twice that, … up to `max`, jittered so hosts that failed
/// together do not retry together; a success forgets the key's failures.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: BTreeMap<Request, u32>,
    /// A fixed jitter seed (tests); random otherwise.
    seed: Option<u64>,
}

impl Backoff {
    /// Waits with jitter drawn from `seed`, the same on every run.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn seeded(seed: u64) -> Backoff {
        Backoff {
            seed: Some(seed),
            ..Backoff::default()
        }
    }

    pub fn failed(&mut self, r: &Request, first: Duration, max: Duration) -> Duration {
        let n = self.failures.entry(r.clone()).or_default();
        *n += 1;
        let b = crate::backoff::Backoff::new(first, max);
        match self.seed {
            Some(seed) => b.seeded(seed).after(*n),
            None => b.after(*n),
        }
    }

    pub fn succeeded(&mut self, r: &Request) {
        self.failures.remove(r);
    }

    pub fn failures(&self, r: &Request) -> u32 {
        self.failures.get(r).copied().unwrap_or(0)
    }
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
    async fn the_queue_length_counts_work_due_now_not_timers() {
        let s = Scheduler::default();
        s.after(Request::Drift, Duration::from_secs(600));
        s.after(Request::Job("backup".into()), Duration::from_secs(60));
        assert_eq!((s.len(), s.due_now()), (2, 0), "two timers, no work");
        s.now(Request::Head);
        assert_eq!(s.due_now(), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(s.due_now(), 2, "the job is due now");
        s.next().await;
        assert_eq!(s.due_now(), 1, "taken work leaves the queue");
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
        let mut b = Backoff::seeded(42);
        let max = Duration::from_secs(60);
        let two = Duration::from_secs(2);
        let waits: Vec<Duration> = (0..8).map(|_| b.failed(&Request::Head, two, max)).collect();
        for (i, w) in waits.iter().enumerate() {
            let full = Duration::from_secs(2 << i).min(max);
            assert!(
                *w >= full / 2 && *w <= full,
                "attempt {i}: {w:?} of {full:?}"
            );
        }
        assert_eq!(b.failures(&Request::Head), 8);
        b.succeeded(&Request::Head);
        assert_eq!(b.failures(&Request::Head), 0);
        let first = b.failed(&Request::Head, two, max);
        assert!(first <= Duration::from_secs(2));
        // Seeded: the same waits again, so a test can rely on them.
        let mut again = Backoff::seeded(42);
        let replay: Vec<Duration> = (0..8)
            .map(|_| again.failed(&Request::Head, two, max))
            .collect();
        assert_eq!(replay, waits);
    }

    /// The daemon's retry of a request, on tokio's paused clock: the
    /// scheduler releases it exactly when the seeded backoff says.
    #[tokio::test(start_paused = true)]
    async fn a_failed_request_comes_back_after_its_backoff_on_the_paused_clock() {
        let s = Scheduler::default();
        let mut b = Backoff::seeded(3);
        let expected =
            crate::backoff::Backoff::new(Duration::from_secs(2), Duration::from_secs(300))
                .seeded(3);
        let t = Instant::now();
        let mut total = Duration::ZERO;
        for n in 1..=4 {
            let wait = b.failed(
                &Request::Head,
                Duration::from_secs(2),
                Duration::from_secs(300),
            );
            assert_eq!(wait, expected.after(n));
            s.after(Request::Head, wait);
            assert_eq!(s.next().await, Request::Head);
            total += wait;
            assert_eq!(t.elapsed(), total, "released when due, not before");
        }
    }

    #[test]
    fn the_error_policy_polls_a_down_remote_less_and_unreached_hosts_sooner() {
        let poll = Duration::from_secs(60);
        let (first, max, keep_polling) = Again::Fetch.policy(poll);
        assert_eq!(
            (first, max, keep_polling),
            (poll, Duration::from_secs(300), false)
        );
        let hosts = Again::Hosts {
            unreachable: 1,
            busy: 2,
        };
        let (first, max, keep_polling) = hosts.policy(poll);
        assert_eq!(first, Duration::from_secs(2));
        assert_eq!(max, Duration::from_secs(300));
        assert!(keep_polling, "new commits are still fetched at the poll");
        let busy = Again::Hosts {
            unreachable: 0,
            busy: 1,
        };
        assert_eq!(busy.policy(poll), hosts.policy(poll));
        assert_eq!(
            (hosts.label(), busy.label(), Again::Fetch.label()),
            ("unreachable", "busy", "fetch")
        );
        assert_eq!(
            Again::Forge.policy(poll),
            (poll, Duration::from_secs(300), false),
            "a forge that is down is asked at most once a poll"
        );
    }
}
