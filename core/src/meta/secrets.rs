//! The cluster's secrets in the metadata store: the key that signs shuffle grants.

use super::{Compare, Keys, MetaStore, Op};
use crate::error::Result;
use crate::shuffle::grant::TicketKey;

/// The cluster's ticket key, when one was made.
pub async fn ticket_key(store: &dyn MetaStore, keys: &Keys) -> Result<Option<TicketKey>> {
    match store.get(&keys.ticket_key()).await? {
        Some(kv) => Ok(Some(TicketKey::from_bytes(&kv.value)?)),
        None => Ok(None),
    }
}

/// The cluster's ticket key, made (by whichever scheduler gets there first) when there is
/// none yet.
pub async fn ensure_ticket_key(store: &dyn MetaStore, keys: &Keys) -> Result<TicketKey> {
    if let Some(key) = ticket_key(store, keys).await? {
        return Ok(key);
    }
    let fresh = TicketKey::generate()?;
    let name = keys.ticket_key();
    store
        .txn(
            vec![Compare::CreateRevision(name.clone(), 0)],
            vec![Op::put(name, fresh.to_bytes())],
        )
        .await?;
    // Won or lost, the stored key is the cluster's.
    ticket_key(store, keys).await?.ok_or_else(|| {
        crate::EmberError::Unavailable("the cluster's ticket key vanished from the store".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MemoryStore;
    use crate::shuffle::grant::Scope;

    #[tokio::test]
    async fn one_key_per_cluster() {
        let store = MemoryStore::new();
        let keys = Keys::new("c");
        assert!(ticket_key(&store, &keys).await.unwrap().is_none());
        let first = ensure_ticket_key(&store, &keys).await.unwrap();
        let again = ensure_ticket_key(&store, &keys).await.unwrap();
        let read = ticket_key(&store, &keys).await.unwrap().unwrap();
        let scope = Scope {
            job_id: "j",
            stage_id: 1,
        };
        let grant = first.grant(scope, 10);
        assert_eq!(again.verify(&grant, scope, 0), Ok(()));
        assert_eq!(read.verify(&grant, scope, 0), Ok(()));
    }
}
