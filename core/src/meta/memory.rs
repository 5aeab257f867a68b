//! The in-memory [`MetaStore`]: one process's cluster metadata (embedded mode) and the fast
//! backend of unit tests. Leases expire by the clock; watches see every change in order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{Compare, KeyValue, LeaseId, MetaStore, Op, TxnResult, WatchEvent, WatchStream};
use crate::error::{EmberError, Result};

/// How many past events a watch can start from.
const HISTORY: usize = 4096;

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<String>,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    data: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    history: VecDeque<(i64, WatchEvent)>,
}

#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(i64, WatchEvent)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(State::default())),
            events: broadcast::channel(HISTORY).0,
        }
    }

    /// Expires leases past their deadline (deleting their keys); run before every operation
    /// and by the background task that leases start.
    fn expire(&self, st: &mut State) {
        let now = Instant::now();
        let expired: Vec<LeaseId> = st
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_lease(st, id);
        }
    }

    fn end_lease(&self, st: &mut State, id: LeaseId) {
        if let Some(lease) = st.leases.remove(&id) {
            st.revision += 1;
            let mut keys: Vec<String> = lease.keys.into_iter().collect();
            keys.sort();
            for key in keys {
                self.delete_key(st, &key);
            }
        }
    }

    fn emit(&self, st: &mut State, event: WatchEvent) {
        st.history.push_back((st.revision, event.clone()));
        if st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.events.send((st.revision, event));
    }

    fn put_key(
        &self,
        st: &mut State,
        key: &str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<()> {
        if key.len() + value.len() > super::MAX_REQUEST_BYTES {
            return Err(EmberError::Internal(format!(
                "a value of {} bytes at {key} exceeds the metadata store's request limit",
                value.len()
            )));
        }
        let lease = lease.unwrap_or(0);
        if lease != 0 {
            let Some(l) = st.leases.get_mut(&lease) else {
                return Err(EmberError::User(format!("lease {lease} not found")));
            };
            l.keys.insert(key.to_string());
        }
        let create_revision = match st.data.get(key) {
            Some(old) => {
                if old.lease != 0
                    && old.lease != lease
                    && let Some(l) = st.leases.get_mut(&old.lease)
                {
                    l.keys.remove(key);
                }
                old.create_revision
            }
            None => st.revision,
        };
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: st.revision,
            lease,
        };
        st.data.insert(key.to_string(), kv.clone());
        self.emit(st, WatchEvent::Put(kv));
        Ok(())
    }

    fn delete_key(&self, st: &mut State, key: &str) -> bool {
        let Some(old) = st.data.remove(key) else {
            return false;
        };
        if let Some(l) = st.leases.get_mut(&old.lease) {
            l.keys.remove(key);
        }
        let revision = st.revision;
        self.emit(
            st,
            WatchEvent::Delete {
                key: key.to_string(),
                revision,
            },
        );
        true
    }

    fn check(st: &State, compare: &Compare) -> bool {
        match compare {
            Compare::CreateRevision(key, rev) => {
                st.data.get(key).map_or(0, |kv| kv.create_revision) == *rev
            }
            Compare::Value(key, value) => st.data.get(key).is_some_and(|kv| kv.value == *value),
        }
    }

    fn apply(&self, st: &mut State, op: Op) -> Result<()> {
        match op {
            Op::Put { key, value, lease } => self.put_key(st, &key, value, lease)?,
            Op::Delete(key) => {
                self.delete_key(st, &key);
            }
            Op::DeletePrefix(prefix) => {
                let keys: Vec<String> = st
                    .data
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    self.delete_key(st, &key);
                }
            }
        }
        Ok(())
    }

    fn start_expiry(&self) {
        let weak = Arc::downgrade(&self.state);
        let this = self.clone();
        drop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(state) = weak.upgrade() else { return };
                let mut st = state.lock();
                this.expire(&mut st);
                if st.leases.is_empty() {
                    return;
                }
            }
        }));
    }
}

#[async_trait::async_trait]
impl MetaStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut st = self.state.lock();
        self.expire(&mut st);
        Ok(st.data.get(key).cloned())
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let mut st = self.state.lock();
        self.expire(&mut st);
        let kvs = st
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((kvs, st.revision))
    }

    async fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<i64> {
        let mut st = self.state.lock();
        self.expire(&mut st);
        st.revision += 1;
        self.put_key(&mut st, key, value, lease)?;
        Ok(st.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut st = self.state.lock();
        self.expire(&mut st);
        if !st.data.contains_key(key) {
            return Ok(false);
        }
        st.revision += 1;
        Ok(self.delete_key(&mut st, key))
    }

    async fn txn(&self, compares: Vec<Compare>, then: Vec<Op>) -> Result<TxnResult> {
        let mut st = self.state.lock();
        self.expire(&mut st);
        if !compares.iter().all(|c| Self::check(&st, c)) {
            return Ok(TxnResult {
                succeeded: false,
                revision: st.revision,
            });
        }
        let size: usize = then
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len(),
                Op::Delete(key) | Op::DeletePrefix(key) => key.len(),
            })
            .sum();
        if size > super::MAX_REQUEST_BYTES {
            return Err(EmberError::Internal(format!(
                "a transaction of {size} bytes exceeds the metadata store's request limit"
            )));
        }
        for op in &then {
            if let Op::Put {
                lease: Some(lease), ..
            } = op
                && *lease != 0
                && !st.leases.contains_key(lease)
            {
                return Err(EmberError::User(format!("lease {lease} not found")));
            }
        }
        if !then.is_empty() {
            st.revision += 1;
        }
        for op in then {
            self.apply(&mut st, op)?;
        }
        Ok(TxnResult {
            succeeded: true,
            revision: st.revision,
        })
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        let (id, first) = {
            let mut st = self.state.lock();
            self.expire(&mut st);
            st.next_lease += 1;
            let id = st.next_lease;
            let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
            st.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: HashSet::new(),
                },
            );
            (id, st.leases.len() == 1)
        };
        if first {
            self.start_expiry();
        }
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<i64> {
        let mut st = self.state.lock();
        self.expire(&mut st);
        Ok(match st.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                l.ttl.as_secs() as i64
            }
            None => 0,
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut st = self.state.lock();
        self.end_lease(&mut st, lease);
        Ok(())
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let (past, live) = {
            let mut st = self.state.lock();
            self.expire(&mut st);
            let oldest = st.history.front().map_or(st.revision + 1, |(r, _)| *r);
            if after + 1 < oldest && after < st.revision {
                return Err(EmberError::Unavailable(format!(
                    "revision {after} is no longer in the history"
                )));
            }
            let past: Vec<(i64, WatchEvent)> = st
                .history
                .iter()
                .filter(|(r, e)| *r > after && e.key().starts_with(prefix))
                .cloned()
                .collect();
            (past, self.events.subscribe())
        };
        let last_past = past.last().map_or(after, |(r, _)| *r);
        let prefix = prefix.to_string();
        let live = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(move |item| {
            let prefix = prefix.clone();
            async move {
                match item {
                    Ok((rev, event)) if rev > last_past && event.key().starts_with(&prefix) => {
                        Some(Ok(event))
                    }
                    Ok(_) => None,
                    Err(_) => Some(Err(EmberError::Unavailable(
                        "watch fell behind; re-read and watch again".into(),
                    ))),
                }
            }
        });
        Ok(futures::stream::iter(past.into_iter().map(|(_, e)| Ok(e)))
            .chain(live)
            .boxed())
    }
}
