//! Who may start more work: each client (by its authenticated name) may have at most
//! `--max-jobs-per-client` queries and batch jobs being planned or running at once, so that
//! one client cannot take the scheduler from the others.

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::{EmberError, Result};
use parking_lot::Mutex;

use super::Scheduler;
use crate::driver::JobEntry;

/// Submissions being planned now, by owner.
#[derive(Debug, Default, Clone)]
pub(crate) struct Planning(Arc<Mutex<HashMap<String, usize>>>);

/// One admitted submission: counted as planning until dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    planning: Planning,
    owner: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.planning.0.lock();
        if let Some(n) = counts.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}

/// Whether `owner`, with `in_flight` jobs planned or running, may start one more.
pub(crate) fn decide(owner: &str, in_flight: usize, limit: usize) -> Result<()> {
    if limit == 0 || in_flight < limit {
        return Ok(());
    }
    Err(EmberError::ResourcesExhausted(format!(
        "{owner} already has {in_flight} queries and batch jobs planned or running, the most \
         one client may (--max-jobs-per-client {limit}); wait for one to finish"
    )))
}

impl Scheduler {
    /// Admits one more query or batch job of `owner` (unlimited when the owner is unknown).
    pub(crate) fn admit(&self, owner: Option<&str>) -> Result<Option<Permit>> {
        let Some(owner) = owner else {
            return Ok(None);
        };
        let planning = self.planning.clone();
        // Held while the running jobs are counted: a submission of the same owner that moves
        // from planning to running meanwhile is counted once, not missed.
        let mut counts = planning.0.lock();
        let running = self.in_flight_of(owner);
        let count = counts.entry(owner.to_string()).or_default();
        decide(owner, running + *count, self.config.max_jobs_per_client)?;
        *count += 1;
        drop(counts);
        Ok(Some(Permit {
            planning,
            owner: owner.to_string(),
        }))
    }

    /// `owner`'s unfinished batch jobs, and its unfinished queries that are not their
    /// statements.
    fn in_flight_of(&self, owner: &str) -> usize {
        let queries = self
            .driver
            .lock()
            .jobs()
            .filter(|(_, entry)| match entry {
                JobEntry::Distributed(job) => {
                    !job.state.is_terminal()
                        && job.label.script.is_none()
                        && job.label.owner.as_deref() == Some(owner)
                }
                JobEntry::Inline(_) => false,
            })
            .count();
        queries + self.scripts.in_flight_of(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_at_its_limit_is_refused_with_the_setting_named() {
        assert!(decide("alice", 0, 2).is_ok());
        assert!(decide("alice", 1, 2).is_ok());
        let err = decide("alice", 2, 2).unwrap_err();
        assert!(matches!(err, EmberError::ResourcesExhausted(_)));
        assert!(err.to_string().contains("--max-jobs-per-client 2"), "{err}");
        assert!(decide("alice", 1000, 0).is_ok(), "0 means no limit");
    }

    #[test]
    fn permits_count_while_held() {
        let planning = Planning::default();
        let permit = |owner: &str| {
            *planning.0.lock().entry(owner.into()).or_default() += 1;
            Permit {
                planning: planning.clone(),
                owner: owner.into(),
            }
        };
        let a = permit("alice");
        let b = permit("alice");
        assert_eq!(planning.0.lock().get("alice"), Some(&2));
        drop(a);
        assert_eq!(planning.0.lock().get("alice"), Some(&1));
        drop(b);
        assert!(planning.0.lock().is_empty());
    }
}
