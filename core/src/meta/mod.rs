//! Cluster metadata: the small, durable facts the cluster coordinates on (who leads, which
//! executors are alive, what each job is and how far it got), behind one trait with two
//! backends — [`MemoryStore`] for embedded mode and unit tests, [`EtcdStore`] for clusters.
//!
//! The trait is etcd's model, narrowed to what Ember uses: keys with revisions, transactions
//! guarded by compares (how a leader fences its writes), leases (how a process's keys vanish
//! when it dies) and watches (how the leader learns of it). [`conformance::run`] checks that a
//! backend behaves as this page says.

pub mod conformance;
mod etcd;
mod lease;
mod memory;
mod secrets;

use std::fmt::Debug;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use etcd::EtcdStore;
pub use lease::{KeptLease, Renewal};
pub use memory::MemoryStore;
pub use secrets::{ensure_ticket_key, ticket_key};

use crate::error::Result;

/// etcd lease id.
pub type LeaseId = i64;

/// Largest value Ember writes as one key; bigger values are split over numbered keys
/// ([`put_chunked`]). etcd 3.4 refuses requests above about 1.5 MiB.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// Largest request etcd 3.4 accepts by default (`--max-request-bytes`); the memory store
/// refuses larger writes too, so embedded mode finds an oversized value as etcd would.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the put that created the key (changes when it is deleted and recreated).
    pub create_revision: i64,
    pub mod_revision: i64,
    /// Lease the key is attached to; 0 for none.
    pub lease: LeaseId,
}

/// A condition of a transaction; all must hold for its `then` operations to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's create revision equals this (0: the key does not exist).
    CreateRevision(String, i64),
    /// The key exists and holds exactly this value.
    Value(String, Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Delete(String),
    DeletePrefix(String),
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held (and the operations ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: i64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// Events under a prefix, in revision order. An error ends the stream: the watcher re-reads
/// the prefix and watches again from the revision it read at.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// The metadata store. Errors of an unreachable store are `EmberError::Unavailable`: callers
/// retry them.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + Debug {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Keys starting with `prefix`, in key order, and the revision they were read at.
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)>;
    /// Returns the revision of the write.
    async fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<i64>;
    /// Returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    async fn txn(&self, compares: Vec<Compare>, then: Vec<Op>) -> Result<TxnResult>;
    /// A lease that expires `ttl_secs` after its last keep-alive.
    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId>;
    /// Renews a lease; returns its remaining TTL in seconds, 0 when it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<i64>;
    /// Ends a lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
    /// Events on keys under `prefix` after revision `after`.
    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream>;
}

/// Where Ember's facts live in the store, under `/ember/{cluster}`.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Self {
        Keys {
            root: format!("/ember/{cluster}"),
        }
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }
    pub fn executors(&self) -> String {
        format!("{}/executors/", self.root)
    }
    pub fn executor(&self, id: &str) -> String {
        format!("{}/executors/{id}", self.root)
    }
    pub fn jobs(&self) -> String {
        format!("{}/jobs/", self.root)
    }
    pub fn job_prefix(&self, job: &str) -> String {
        format!("{}/jobs/{job}/", self.root)
    }
    pub fn job(&self, job: &str) -> String {
        format!("{}/jobs/{job}/job", self.root)
    }
    pub fn stage_plan(&self, job: &str, stage: u32) -> String {
        format!("{}/jobs/{job}/plan/{stage}", self.root)
    }
    pub fn stage_output(&self, job: &str, stage: u32) -> String {
        format!("{}/jobs/{job}/out/{stage}", self.root)
    }

    pub fn writes(&self) -> String {
        format!("{}/writes/", self.root)
    }

    pub fn write(&self, job: &str) -> String {
        format!("{}/writes/{job}", self.root)
    }

    pub fn scripts(&self) -> String {
        format!("{}/scripts/", self.root)
    }

    pub fn script(&self, id: &str) -> String {
        format!("{}/scripts/{id}", self.root)
    }

    /// Jobs and batch jobs that ended, kept for listings (bounded by count and age).
    pub fn history_prefix(&self) -> String {
        format!("{}/history/", self.root)
    }

    pub fn history(&self, id: &str) -> String {
        format!("{}/history/{id}", self.root)
    }

    /// The cluster's key for signing shuffle grants (`core::shuffle::grant`).
    pub fn ticket_key(&self) -> String {
        format!("{}/secrets/ticket-key", self.root)
    }

    /// The shared catalog: one key per schema and per table or view.
    pub fn catalog(&self) -> String {
        format!("{}/catalog/", self.root)
    }

    /// A catalog entry; `path` is its name's parts (catalog, schema[, table]), each escaped
    /// so that no part can reach into another's keys.
    pub fn catalog_entry(&self, kind: &str, path: &[&str]) -> String {
        let parts: Vec<String> = path.iter().map(|p| escape_key_part(p)).collect();
        format!("{}/catalog/{kind}/{}", self.root, parts.join("/"))
    }
}

/// `/` and `%` percent-encoded, so any name is one key segment.
fn escape_key_part(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2F")
}

/// Writes a value that may exceed [`MAX_VALUE_BYTES`] as `key/00000`, `key/00001`, …, each
/// write guarded by `guard`. Returns how many chunks were written, or `None` when a guard
/// failed. Read back with [`get_chunked`].
pub async fn put_chunked(
    store: &dyn MetaStore,
    key: &str,
    value: &[u8],
    guard: &[Compare],
) -> Result<Option<u32>> {
    let chunks: Vec<&[u8]> = if value.is_empty() {
        vec![&[][..]]
    } else {
        value.chunks(MAX_VALUE_BYTES).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let op = Op::put(chunk_key(key, i as u32), Bytes::copy_from_slice(chunk));
        if !store.txn(guard.to_vec(), vec![op]).await?.succeeded {
            return Ok(None);
        }
    }
    Ok(Some(chunks.len() as u32))
}

/// Reads a value written by [`put_chunked`] in `chunks` pieces; `None` when a piece is missing.
pub async fn get_chunked(store: &dyn MetaStore, key: &str, chunks: u32) -> Result<Option<Bytes>> {
    let (kvs, _) = store.range(&format!("{key}/")).await?;
    let mut out = Vec::new();
    for i in 0..chunks {
        let wanted = chunk_key(key, i);
        match kvs.iter().find(|kv| kv.key == wanted) {
            Some(kv) => out.extend_from_slice(&kv.value),
            None => return Ok(None),
        }
    }
    Ok(Some(Bytes::from(out)))
}

fn chunk_key(key: &str, i: u32) -> String {
    format!("{key}/{i:05}")
}
