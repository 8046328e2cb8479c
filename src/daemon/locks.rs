//! Per-host locks shared by commits, drift checks and maintenance jobs: a
//! job on host A never delays a commit for host B, and a commit works on
//! the hosts that are free, leaving the busy ones for its next pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub(crate) struct HostLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Who holds each busy host, for the status page ("maintenance job backup").
    holders: Mutex<BTreeMap<String, String>>,
}

/// Hosts held by one piece of work; released on drop.
pub(crate) struct Held {
    guards: Vec<(String, OwnedMutexGuard<()>)>,
    locks: Arc<HostLocks>,
}

impl Held {
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.guards.iter().map(|(h, _)| h.clone()).collect()
    }

    /// Let go of `hosts` early (a rollout's stage that is done).
    pub(crate) fn release(&mut self, hosts: &[String]) {
        let mut holders = self.locks.holders.lock().unwrap();
        self.guards.retain(|(h, _)| {
            let keep = !hosts.contains(h);
            if !keep {
                holders.remove(h);
            }
            keep
        });
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut holders = self.locks.holders.lock().unwrap();
        for (h, _) in &self.guards {
            holders.remove(h);
        }
    }
}

impl HostLocks {
    fn lock_of(&self, host: &str) -> Arc<AsyncMutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    /// Take every free host of `hosts` for `who`; the busy ones with their holders.
    pub(crate) fn try_take(
        self: &Arc<Self>,
        hosts: &[String],
        who: &str,
    ) -> (Held, Vec<(String, String)>) {
        let mut guards = Vec::new();
        let mut busy = Vec::new();
        for h in hosts {
            match self.lock_of(h).try_lock_owned() {
                Ok(g) => guards.push((h.clone(), g)),
                Err(_) => busy.push((
                    h.clone(),
                    self.holders
                        .lock()
                        .unwrap()
                        .get(h)
                        .cloned()
                        .unwrap_or_else(|| "another run".into()),
                )),
            }
        }
        let mut holders = self.holders.lock().unwrap();
        for (h, _) in &guards {
            holders.insert(h.clone(), who.to_string());
        }
        drop(holders);
        (
            Held {
                guards,
                locks: self.clone(),
            },
            busy,
        )
    }

    /// Wait for `host` and take it for `who`.
    pub(crate) async fn take(self: &Arc<Self>, host: &str, who: &str) -> Held {
        let g = self.lock_of(host).lock_owned().await;
        self.holders
            .lock()
            .unwrap()
            .insert(host.to_string(), who.to_string());
        Held {
            guards: vec![(host.to_string(), g)],
            locks: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_host_is_busy_for_others_with_its_holder_and_free_after() {
        let locks = Arc::new(HostLocks::default());
        let hosts = ["a".to_string(), "b".to_string()];
        let job = locks.take("a", "maintenance job backup").await;
        let (commit, busy) = locks.try_take(&hosts, "commit 1234");
        assert_eq!(commit.hosts(), ["b"]);
        assert_eq!(
            busy,
            [("a".to_string(), "maintenance job backup".to_string())]
        );
        drop(job);
        drop(commit);
        let (all, busy) = locks.try_take(&hosts, "commit 5678");
        assert_eq!(all.hosts(), ["a", "b"]);
        assert!(busy.is_empty());
    }

    #[tokio::test]
    async fn a_rollout_lets_go_of_the_hosts_of_a_stage_that_is_done() {
        let locks = Arc::new(HostLocks::default());
        let hosts = ["a".to_string(), "b".to_string()];
        let (mut rollout, _) = locks.try_take(&hosts, "commit 1234");
        rollout.release(&["a".to_string()]);
        assert_eq!(rollout.hosts(), ["b"]);
        let (job, busy) = locks.try_take(&hosts, "maintenance job backup");
        assert_eq!(job.hosts(), ["a"], "a is free for a job");
        assert_eq!(busy, [("b".to_string(), "commit 1234".to_string())]);
    }
}
