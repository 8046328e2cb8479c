//! The one backoff every retry takes its waits from: exponential (backon's)
//! with jitter, so work that failed together does not retry together. The
//! daemon's error policy, notification retries, cloud API calls and a
//! ref-lock race all use it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Waits of `first`, twice that, … up to `max`, each scaled by a factor in
/// [0.5, 1): never above the cap, never below half the plain wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    /// A fixed jitter, for tests; random per sequence otherwise.
    seed: Option<u64>,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            seed: None,
        }
    }

    /// The same waits, with jitter drawn from `seed`: the same seed, the same waits.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) const fn seeded(self, seed: u64) -> Backoff {
        Backoff {
            seed: Some(seed),
            ..self
        }
    }

    /// The waits after the first failure, the second, … (endless).
    pub(crate) fn waits(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        // backon adds a jitter in [0, d) to each wait d: halving the bounds
        // makes that [d/2, d) of the plain wait.
        let mut b = ExponentialBuilder::default()
            .with_min_delay(self.first / 2)
            .with_max_delay(self.max / 2)
            .with_factor(2.0)
            .without_max_times()
            .with_jitter();
        if let Some(seed) = self.seed {
            b = b.with_jitter_seed(seed);
        }
        let max = self.max;
        // Whole milliseconds, tokio's timer resolution (a paused clock
        // lands exactly on them); f32 arithmetic may land a hair above the cap.
        b.build()
            .map(move |d| Duration::from_millis(d.as_millis() as u64).min(max))
    }

    /// The wait after `failures` failures in a row (1 for the first).
    pub(crate) fn after(&self, failures: u32) -> Duration {
        let n = failures.max(1) as usize - 1;
        self.waits().nth(n).unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn waits_double_from_the_first_up_to_the_cap_within_the_jitter_band() {
        let b = Backoff::new(secs(1), secs(300));
        let waits: Vec<Duration> = b.waits().take(14).collect();
        for (i, w) in waits.iter().enumerate() {
            let plain = secs(1 << i.min(20)).min(secs(300));
            assert!(
                *w >= plain / 2 && *w <= plain,
                "wait {i}: {w:?} of {plain:?}"
            );
        }
        assert!(waits.iter().all(|w| *w <= secs(300)), "{waits:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_waits_and_another_seed_others() {
        let b = Backoff::new(secs(2), secs(60));
        let one: Vec<Duration> = b.seeded(7).waits().take(8).collect();
        assert_eq!(one, b.seeded(7).waits().take(8).collect::<Vec<_>>());
        assert_ne!(one, b.seeded(8).waits().take(8).collect::<Vec<_>>());
        assert_eq!(b.seeded(7).after(3), one[2]);
    }

    #[test]
    fn two_sequences_without_a_seed_do_not_retry_in_step() {
        let b = Backoff::new(secs(10), secs(300));
        let first: Vec<Duration> = b.waits().take(6).collect();
        let second: Vec<Duration> = b.waits().take(6).collect();
        assert_ne!(first, second, "jitter spreads them");
    }
}
