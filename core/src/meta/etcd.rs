//! The etcd [`MetaStore`], on `etcd-client`. The client reconnects by itself; while etcd is
//! unreachable every call fails with `EmberError::Unavailable` and callers retry.

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use futures::StreamExt;

use super::{Compare, KeyValue, LeaseId, MetaStore, Op, TxnResult, WatchEvent, WatchStream};
use crate::error::{EmberError, Result};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn unavailable(e: etcd_client::Error) -> EmberError {
    EmberError::Unavailable(format!("etcd: {e}"))
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

impl EtcdStore {
    /// Connects to etcd at `urls` (comma-separated `http://host:port` list). Fails when none
    /// answers within a few seconds.
    pub async fn connect(urls: &str) -> Result<Self> {
        let endpoints: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(EmberError::User("--etcd needs at least one URL".into()));
        }
        for url in &endpoints {
            crate::net::check_url(url)?;
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        // etcd over TLS: `https://` endpoints, trusting the cluster's CA and presenting this
        // process's certificate (etcd's --client-cert-auth checks it).
        let https = endpoints
            .iter()
            .filter(|u| u.starts_with("https://"))
            .count();
        if https > 0 {
            if https < endpoints.len() {
                return Err(EmberError::User(
                    "--etcd mixes https:// and http:// endpoints".into(),
                ));
            }
            let tls = crate::tls::client_outside().ok_or_else(|| {
                EmberError::User(
                    "etcd over https needs the CA to trust (--tls-ca or EMBER_TLS_CA)".into(),
                )
            })?;
            options = options.with_tls(tls);
        }
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(EtcdStore { client, endpoints })
    }

    fn client(&self) -> Client {
        self.client.clone()
    }
}

#[async_trait::async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.client().get(key, None).await.map_err(unavailable)?;
        Ok(resp.kvs().first().map(key_value))
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let resp = self
            .client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.kvs().iter().map(key_value).collect(), revision))
    }

    async fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<i64> {
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        let resp = self
            .client()
            .put(key, value.to_vec(), options)
            .await
            .map_err(unavailable)?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let resp = self.client().delete(key, None).await.map_err(unavailable)?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, compares: Vec<Compare>, then: Vec<Op>) -> Result<TxnResult> {
        let compares: Vec<etcd_client::Compare> = compares
            .into_iter()
            .map(|c| match c {
                Compare::CreateRevision(key, rev) => {
                    etcd_client::Compare::create_revision(key, CompareOp::Equal, rev)
                }
                Compare::Value(key, value) => {
                    etcd_client::Compare::value(key, CompareOp::Equal, value.to_vec())
                }
            })
            .collect();
        let ops: Vec<TxnOp> = then
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    key,
                    value.to_vec(),
                    lease.map(|l| PutOptions::new().with_lease(l)),
                ),
                Op::Delete(key) => TxnOp::delete(key, None),
                Op::DeletePrefix(prefix) => {
                    TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let resp = self
            .client()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(unavailable)?;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        let resp = self
            .client()
            .lease_grant(ttl_secs, None)
            .await
            .map_err(unavailable)?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<i64> {
        // An expired lease is an answer (TTL 0), not a failure to reach etcd.
        let expired = |e: &etcd_client::Error| match e {
            etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
            etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::NotFound,
            _ => false,
        };
        let reply = async {
            let (mut keeper, mut stream) = self.client().lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match reply.await {
            Ok(Some(resp)) => Ok(resp.ttl()),
            Ok(None) => Err(EmberError::Unavailable(
                "etcd closed the keep-alive stream".into(),
            )),
            Err(e) if expired(&e) => Ok(0),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        match self.client().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            // Already expired: nothing left to revoke.
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let stream = self
            .client()
            .watch(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        let events = stream.flat_map(|resp| {
            let items: Vec<Result<WatchEvent>> = match resp {
                Err(e) => vec![Err(unavailable(e))],
                Ok(resp) if resp.canceled() => vec![Err(EmberError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                )))],
                Ok(resp) => {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    resp.events()
                        .iter()
                        .filter_map(|ev| {
                            let kv = ev.kv()?;
                            Some(Ok(match ev.event_type() {
                                EventType::Put => WatchEvent::Put(key_value(kv)),
                                EventType::Delete => WatchEvent::Delete {
                                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    revision: kv.mod_revision().max(revision),
                                },
                            }))
                        })
                        .collect()
                }
            };
            futures::stream::iter(items)
        });
        Ok(events.boxed())
    }
}
