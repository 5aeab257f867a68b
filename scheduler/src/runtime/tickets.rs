//! Grants on shuffle data: the leader signs every location it hands out — to a reading task
//! (in its resolved plan) or to a client (in a job's result) — for that job's stage.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use ember_core::shuffle::PartitionLocation;
use ember_core::shuffle::grant::TicketKey;

use super::unix_ms;

/// How long a grant stays valid after it was issued: longer than any stage is expected to
/// run (a stage's plan is encoded, and its inputs' grants issued, when the stage starts; its
/// retried tasks reuse them).
pub(crate) const GRANT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The cluster's ticket key, once the leader has read or made it.
#[derive(Default)]
pub(crate) struct Tickets {
    key: OnceLock<TicketKey>,
}

impl Tickets {
    pub(crate) fn set_key(&self, key: TicketKey) {
        // The key is the cluster's, the same for every leadership: the first one read stays.
        let _ = self.key.set(key);
    }

    pub(crate) fn key(&self) -> Option<TicketKey> {
        self.key.get().cloned()
    }

    /// Signs every location in `parts` for its own job and stage.
    pub(crate) fn sign(&self, parts: &mut [Vec<PartitionLocation>]) {
        let Some(key) = self.key.get() else {
            tracing::warn!("no ticket key yet: locations handed out unsigned will be refused");
            return;
        };
        let expires = unix_ms() + GRANT_TTL.as_millis() as u64;
        // One grant per stage, not per location: a stage of m maps × n partitions has m·n.
        let mut grants: HashMap<(String, u32), String> = HashMap::new();
        for location in parts.iter_mut().flatten() {
            location.grant = grants
                .entry((location.job_id.clone(), location.stage_id))
                .or_insert_with(|| key.grant(location.scope(), expires))
                .clone();
        }
    }
}
