//! Leadership: schedulers campaign for one key in the metadata store; the winner leads under
//! a lease it keeps alive, the others stand by, watching the key, and campaign again when it
//! goes (the leader's lease ended: it died, was cut off, or resigned). A leader also follows
//! executor membership through the store when executors register there.
//!
//! The leader key's create revision is the leader's fence: every write it makes is a
//! transaction that first compares it, so a deposed leader can change nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ember_core::Result;
use ember_core::job::ExecutorSpec;
use ember_core::meta::{Compare, KeptLease, KeyValue, Op, Renewal, WatchEvent};
use ember_core::records::LeaderRecord;
use futures::StreamExt;
use tracing::{info, warn};

use super::{Role, Scheduler, journal};
use crate::catalog;
use crate::driver::Event;

/// How long to wait before retrying a store that did not answer.
const RETRY: Duration = Duration::from_millis(500);

/// Campaigns, leads and stands by until shutdown; on shutdown a leader resigns at once so a
/// standby takes over without waiting for the lease to expire.
pub async fn leadership(sched: Arc<Scheduler>, address: String) {
    let token = sched.shutdown_token();
    let record = ember_proto::records::encode_leader(&LeaderRecord {
        scheduler_id: sched.id.clone(),
        address,
        protocol_version: ember_core::PROTOCOL_VERSION,
    });
    let ttl = sched.config.leader_ttl_secs.max(1) as i64;
    while !token.is_cancelled() {
        let won = tokio::select! {
            _ = token.cancelled() => return,
            won = campaign(&sched, &record, ttl) => won,
        };
        match won {
            Ok(Some((lease, fence))) => {
                info!(scheduler = %sched.id, fence, "elected leader");
                let id = lease.id;
                lead(&sched, lease, fence).await;
                sched.step_down(fence);
                if token.is_cancelled() {
                    // Resign: the key goes with the lease, and a standby's watch sees it.
                    let _ = sched.store.revoke(id).await;
                    info!("resigned leadership");
                    return;
                }
            }
            Ok(None) => stand_by(&sched).await,
            Err(e) => {
                warn!(error = %e, "campaign failed; retrying");
                sched.set_role(Role::Starting);
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// Tries once to create the leader key under a fresh lease: `Some((lease, fence))` when won.
async fn campaign(sched: &Scheduler, record: &[u8], ttl: i64) -> Result<Option<(KeptLease, i64)>> {
    let key = sched.keys.leader();
    let asked = std::time::Instant::now();
    let lease = sched.store.grant_lease(ttl).await?;
    let put = Op::Put {
        key: key.clone(),
        value: Bytes::copy_from_slice(record),
        lease: Some(lease),
    };
    let result = sched
        .store
        .txn(vec![Compare::CreateRevision(key.clone(), 0)], vec![put])
        .await?;
    if result.succeeded {
        let ttl = Duration::from_secs(ttl as u64);
        return Ok(Some((
            KeptLease::granted_at(lease, ttl, asked),
            result.revision,
        )));
    }
    let _ = sched.store.revoke(lease).await;
    // A key of our own from a term we gave up (the store was unreachable for a while) would
    // block everyone until its lease ran out: remove it and campaign again.
    if let Some(kv) = sched.store.get(&key).await?
        && leader_of(&kv).is_some_and(|l| l.scheduler_id == sched.id)
    {
        sched
            .store
            .txn(
                vec![Compare::CreateRevision(key.clone(), kv.create_revision)],
                vec![Op::Delete(key)],
            )
            .await?;
        return Box::pin(campaign(sched, record, ttl)).await;
    }
    Ok(None)
}

fn leader_of(kv: &KeyValue) -> Option<LeaderRecord> {
    ember_proto::records::decode_leader(&kv.value).ok()
}

/// Leads until the lease is lost (or shutdown): restores the jobs, follows executors, keeps
/// the lease alive.
async fn lead(sched: &Arc<Scheduler>, mut kept: KeptLease, fence: i64) {
    let token = sched.shutdown_token();
    sched.lease_renewed(kept.valid_until());
    // Take over: retried until done, as long as the lease lives.
    let with_etcd = sched.config.cluster.etcd.is_some();
    loop {
        let executors = if with_etcd {
            match read_executors(sched).await {
                Ok((list, revision)) => Some((Some(list), revision)),
                Err(e) => {
                    warn!(error = %e, "reading executors failed");
                    None
                }
            }
        } else {
            Some((None, 0))
        };
        if let Some((list, revision)) = executors {
            match sched.become_leader(fence, list).await {
                Ok(()) => {
                    if with_etcd {
                        sched.spawn(follow_executors(Arc::clone(sched), fence, revision));
                    }
                    break;
                }
                Err(e) => warn!(error = %e, "taking over failed; retrying"),
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
        if !renew(sched, &mut kept).await {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(kept.due_in()) => {}
        }
        if !sched.is_leader(fence) || !renew(sched, &mut kept).await {
            return;
        }
    }
}

/// Renews the leader lease; false when it is gone (or may be).
async fn renew(sched: &Scheduler, kept: &mut KeptLease) -> bool {
    match kept.renew(sched.store.as_ref()).await {
        Renewal::Renewed => {
            sched.lease_renewed(kept.valid_until());
            true
        }
        Renewal::Failed(e) => {
            warn!(error = %e, "renewing the leader lease failed; retrying");
            true
        }
        Renewal::Expired => {
            warn!("the leader lease expired");
            false
        }
        Renewal::Lost(e) => {
            warn!(error = %e, "could not renew the leader lease within its TTL");
            false
        }
    }
}

/// Stands by while another scheduler leads: records where it is (requests are forwarded
/// there) and returns when its key is gone.
async fn stand_by(sched: &Scheduler) {
    let token = sched.shutdown_token();
    let key = sched.keys.leader();
    let current = match sched.store.get(&key).await {
        Ok(Some(kv)) => kv,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "reading the leader failed");
            tokio::time::sleep(RETRY).await;
            return;
        }
    };
    let leader = leader_of(&current).map(|l| l.address);
    sched.set_role(Role::Standby { leader });
    let mut events = match sched.store.watch(&key, current.mod_revision).await {
        Ok(s) => s,
        Err(_) => {
            tokio::time::sleep(RETRY).await;
            return;
        }
    };
    let recheck = Duration::from_secs(sched.config.leader_ttl_secs.max(1));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            // Re-read now and then: a watch can stall silently while the store restarts.
            _ = tokio::time::sleep(recheck) => return,
            event = events.next() => match event {
                Some(Ok(WatchEvent::Delete { .. })) | Some(Err(_)) | None => return,
                Some(Ok(WatchEvent::Put(kv))) => {
                    let leader = leader_of(&kv).map(|l| l.address);
                    sched.set_role(Role::Standby { leader });
                }
            }
        }
    }
}

/// The executors registered in the store, `(spec, draining)`, and the revision read at.
async fn read_executors(sched: &Scheduler) -> Result<(Vec<(ExecutorSpec, bool)>, i64)> {
    let (kvs, revision) = sched.store.range(&sched.keys.executors()).await?;
    Ok((kvs.iter().filter_map(executor_of).collect(), revision))
}

/// Decodes an executor record; one speaking another protocol version is refused here (the
/// executor itself checks the leader's version and stops with the reason).
fn executor_of(kv: &KeyValue) -> Option<(ExecutorSpec, bool)> {
    let record = ember_proto::records::decode_executor(&kv.value).ok()?;
    if record.protocol_version != ember_core::PROTOCOL_VERSION {
        warn!(
            key = %kv.key,
            got = record.protocol_version,
            expected = ember_core::PROTOCOL_VERSION,
            "refusing an executor that speaks another protocol version"
        );
        return None;
    }
    Some((record.spec, record.draining))
}

/// Applies executor joins and losses from the store while leadership `fence` lasts; after a
/// broken watch, re-reads the whole membership and watches again.
async fn follow_executors(sched: Arc<Scheduler>, fence: i64, mut revision: i64) {
    let token = sched.shutdown_token();
    let prefix = sched.keys.executors();
    loop {
        if !sched.is_leader(fence) {
            return;
        }
        match sched.store.watch(&prefix, revision).await {
            Ok(mut events) => loop {
                let event = tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if sched.is_leader(fence) {
                            continue;
                        }
                        return;
                    }
                    e = events.next() => e,
                };
                match event {
                    Some(Ok(WatchEvent::Put(kv))) => {
                        revision = kv.mod_revision;
                        if let Some((spec, draining)) = executor_of(&kv) {
                            sched.dispatch(Event::ExecutorLeased { spec, draining });
                        }
                    }
                    Some(Ok(WatchEvent::Delete { key, revision: r })) => {
                        revision = r;
                        let id = key[prefix.len()..].to_string();
                        sched.dispatch(Event::ExecutorLeaseExpired {
                            executor: id.into(),
                        });
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "executor watch broke; re-reading");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => warn!(error = %e, "cannot watch executors; retrying"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
        if !sched.is_leader(fence) {
            return;
        }
        match read_executors(&sched).await {
            Ok((list, r)) => {
                revision = r;
                sched.dispatch(Event::ExecutorsListed { executors: list });
            }
            Err(e) => warn!(error = %e, "reading executors failed"),
        }
    }
}

impl Scheduler {
    /// Every scheduler, standbys too, learns the cluster's key at start: session tokens are
    /// signed with it, and a client may sign in at any scheduler.
    pub(crate) async fn load_cluster_key(self: Arc<Self>) {
        let mut backoff =
            ember_core::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match ember_core::meta::ensure_ticket_key(self.store.as_ref(), &self.keys).await {
                Ok(key) => {
                    self.tickets.set_key(key.clone());
                    self.auth.set_cluster_key(&key);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the cluster key yet; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_pause()) => {}
                    }
                }
            }
        }
    }

    /// Takes over as leader under `fence`: reads the live executors (when they register in
    /// the store), the catalog, the recorded jobs, commits and batch jobs, and hands them to the
    /// driver, which continues every unfinished job.
    pub(crate) async fn become_leader(
        self: &Arc<Self>,
        fence: i64,
        executors: Option<Vec<(ExecutorSpec, bool)>>,
    ) -> Result<()> {
        if let Some(executors) = executors {
            self.dispatch(Event::ExecutorsListed { executors });
        }
        let key = ember_core::meta::ensure_ticket_key(self.store.as_ref(), &self.keys).await?;
        self.tickets.set_key(key.clone());
        self.auth.set_cluster_key(&key);
        catalog::restore(
            self.store.as_ref(),
            &self.keys,
            &self.ctx,
            &self.config.confinement.allowed_locations,
        )
        .await?;
        // Everything a client could ask about is read before this scheduler takes requests.
        let jobs =
            journal::read_jobs(self.store.as_ref(), &self.keys, &self.ctx.task_ctx()).await?;
        let writes = journal::read_writes(self.store.as_ref(), &self.keys).await?;
        let scripts = self.recorded_scripts().await?;
        self.load_scripts(scripts);
        let unfinished = jobs
            .iter()
            .filter(|j| !j.record.state.is_terminal())
            .count();
        self.set_role(Role::Leader { fence });
        self.dispatch(Event::LeadershipGained {
            fence,
            jobs,
            writes,
        });
        if unfinished > 0 {
            info!(jobs = unfinished, "continuing the recorded jobs");
        }
        self.resume_scripts(fence);
        Ok(())
    }

    /// Leadership `fence` ended: the driver forgets the jobs (the next leader continues them
    /// from their records) and requests are refused until a leader is known.
    pub(crate) fn step_down(&self, fence: i64) {
        if !self.is_leader(fence) {
            return;
        }
        if self.shutdown_token().is_cancelled() {
            info!("leaving leadership: shutting down");
        } else {
            warn!("stepping down as leader");
        }
        self.set_role(Role::Starting);
        *self.lease_deadline.lock() = None;
        self.dispatch(Event::LeadershipLost { fence });
    }
}
