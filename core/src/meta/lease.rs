//! One way to keep a lease alive, for the leader's lease and each executor's: renew it every
//! third of its TTL, sooner again after a failed renewal, and say when it is gone — expired in
//! the store, or not renewed for a whole TTL (then it may have expired without our knowing).

use std::time::{Duration, Instant};

use super::{LeaseId, MetaStore};
use crate::EmberError;

/// What a renewal found.
#[derive(Debug)]
pub enum Renewal {
    /// Renewed for another TTL.
    Renewed,
    /// The store says the lease is gone (its keys with it).
    Expired,
    /// The store did not answer; the lease still holds until [`KeptLease::valid_until`].
    Failed(EmberError),
    /// The store did not answer for a whole TTL: the lease may be gone.
    Lost(EmberError),
}

/// A lease its holder keeps alive.
#[derive(Debug, Clone)]
pub struct KeptLease {
    pub id: LeaseId,
    ttl: Duration,
    renewed: Instant,
    next: Instant,
}

impl KeptLease {
    /// A lease just granted (or renewed) with `ttl`.
    pub fn new(id: LeaseId, ttl: Duration) -> KeptLease {
        Self::granted_at(id, ttl, Instant::now())
    }

    /// A lease with `ttl` whose grant was asked for at `asked` (it holds at least until
    /// `asked + ttl`).
    pub fn granted_at(id: LeaseId, ttl: Duration, asked: Instant) -> KeptLease {
        KeptLease {
            id,
            ttl,
            renewed: asked,
            next: asked + ttl / 3,
        }
    }

    /// Until when the lease surely holds: its last renewal plus the TTL.
    pub fn valid_until(&self) -> Instant {
        self.renewed + self.ttl
    }

    /// How long until the next renewal is due.
    pub fn due_in(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// Renews the lease now.
    pub async fn renew(&mut self, store: &dyn MetaStore) -> Renewal {
        // Counted from when the request left: the store may have renewed it any time after.
        let sent = Instant::now();
        match store.keep_alive(self.id).await {
            Ok(ttl) if ttl > 0 => {
                self.renewed = sent;
                self.next = self.renewed + self.ttl / 3;
                Renewal::Renewed
            }
            Ok(_) => Renewal::Expired,
            Err(e) if self.renewed.elapsed() >= self.ttl => Renewal::Lost(e),
            Err(e) => {
                self.next = Instant::now() + Duration::from_millis(500).min(self.ttl / 3);
                Renewal::Failed(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MemoryStore;

    #[tokio::test]
    async fn a_kept_lease_renews_and_learns_that_it_expired() {
        let store = MemoryStore::new();
        let id = store.grant_lease(5).await.unwrap();
        let mut lease = KeptLease::new(id, Duration::from_secs(5));
        assert!(lease.due_in() <= Duration::from_secs(5) / 3);
        assert!(matches!(lease.renew(&store).await, Renewal::Renewed));
        assert!(lease.valid_until() > Instant::now() + Duration::from_secs(4));
        store.revoke(id).await.unwrap();
        assert!(matches!(lease.renew(&store).await, Renewal::Expired));
    }
}
