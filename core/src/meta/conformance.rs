//! One behaviour for every [`MetaStore`] backend: [`run`] checks it against a store, the
//! in-memory one in unit tests and a real etcd in the integration tests. Each check uses its
//! own key prefix under `root`, so a shared etcd needs no cleaning between runs.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{Compare, MetaStore, Op, WatchEvent, get_chunked, put_chunked};
use crate::error::{EmberError, Result};

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(EmberError::Internal(format!(
            "meta store conformance: {what}"
        )))
    }
}

/// Runs every check; the first failure comes back as an error naming it.
pub async fn run(store: &dyn MetaStore, root: &str) -> Result<()> {
    kv(store, &format!("{root}/kv")).await?;
    transactions(store, &format!("{root}/txn")).await?;
    chunked(store, &format!("{root}/chunked")).await?;
    watches(store, &format!("{root}/watch")).await?;
    leases(store, &format!("{root}/lease")).await?;
    Ok(())
}

async fn kv(store: &dyn MetaStore, p: &str) -> Result<()> {
    check(
        store.get(&format!("{p}/a")).await?.is_none(),
        "missing key reads as none",
    )?;
    let r1 = store.put(&format!("{p}/a"), Bytes::from("1"), None).await?;
    let r2 = store.put(&format!("{p}/a"), Bytes::from("2"), None).await?;
    check(r2 > r1, "revisions increase")?;
    let a = store.get(&format!("{p}/a")).await?.expect("written");
    check(a.value == "2", "get returns the last value")?;
    check(
        a.create_revision == r1 && a.mod_revision == r2,
        "create and mod revisions",
    )?;
    store.put(&format!("{p}/b"), Bytes::from("3"), None).await?;
    store
        .put(&format!("{p}x/c"), Bytes::from("4"), None)
        .await?;
    let (kvs, rev) = store.range(&format!("{p}/")).await?;
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    check(
        keys == [format!("{p}/a"), format!("{p}/b")],
        "range is by prefix, in order",
    )?;
    check(rev >= r2, "range reports its revision")?;
    check(
        store.delete(&format!("{p}/a")).await?,
        "delete of a present key",
    )?;
    check(
        !store.delete(&format!("{p}/a")).await?,
        "delete of an absent key",
    )?;
    Ok(())
}

async fn transactions(store: &dyn MetaStore, p: &str) -> Result<()> {
    let key = format!("{p}/leader");
    let create = |v: &'static str| {
        (
            vec![Compare::CreateRevision(key.clone(), 0)],
            vec![Op::put(key.clone(), v)],
        )
    };
    let (c, o) = create("a");
    check(
        store.txn(c, o).await?.succeeded,
        "create-if-absent on an absent key",
    )?;
    let (c, o) = create("b");
    check(
        !store.txn(c, o).await?.succeeded,
        "create-if-absent on a present key",
    )?;
    let held = store.get(&key).await?.expect("created");
    check(held.value == "a", "a failed transaction changes nothing")?;
    // Fencing: writes guarded by the leader key's create revision.
    let fenced = vec![Compare::CreateRevision(key.clone(), held.create_revision)];
    let guarded = store
        .txn(fenced.clone(), vec![Op::put(format!("{p}/data"), "x")])
        .await?;
    check(
        guarded.succeeded,
        "a write fenced on the current leadership",
    )?;
    store.delete(&key).await?;
    store.put(&key, Bytes::from("b"), None).await?;
    let stale = store
        .txn(fenced, vec![Op::put(format!("{p}/data"), "y")])
        .await?;
    check(
        !stale.succeeded,
        "a write fenced on a leadership that ended",
    )?;
    let by_value = vec![Compare::Value(key.clone(), Bytes::from("b"))];
    let ops = vec![
        Op::put(format!("{p}/d/1"), "1"),
        Op::put(format!("{p}/d/2"), "2"),
    ];
    check(store.txn(by_value, ops).await?.succeeded, "value compare")?;
    let deleted = store
        .txn(Vec::new(), vec![Op::DeletePrefix(format!("{p}/d/"))])
        .await?;
    check(deleted.succeeded, "unconditional transaction")?;
    check(
        store.range(&format!("{p}/d/")).await?.0.is_empty(),
        "delete by prefix",
    )?;
    check(
        store.get(&format!("{p}/data")).await?.expect("kept").value == "x",
        "stale leader's write was refused",
    )?;
    Ok(())
}

async fn chunked(store: &dyn MetaStore, p: &str) -> Result<()> {
    let big: Vec<u8> = (0..(super::MAX_VALUE_BYTES * 2 + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    let n = put_chunked(store, &format!("{p}/big"), &big, &[]).await?;
    check(n == Some(3), "a value over the limit is split")?;
    let back = get_chunked(store, &format!("{p}/big"), 3).await?;
    check(back.as_deref() == Some(&big[..]), "chunks read back whole")?;
    let missing = get_chunked(store, &format!("{p}/big"), 4).await?;
    check(missing.is_none(), "a missing chunk reads as none")?;
    let huge = Bytes::from(vec![0u8; super::MAX_REQUEST_BYTES + 1024]);
    let too_big = store.put(&format!("{p}/huge"), huge, None).await;
    check(
        too_big.is_err(),
        "a value over the request limit is refused",
    )?;
    let refused = put_chunked(
        store,
        &format!("{p}/fenced"),
        b"x",
        &[Compare::Value(format!("{p}/nobody"), Bytes::from("leader"))],
    )
    .await?;
    check(refused.is_none(), "chunked writes are fenced")?;
    Ok(())
}

async fn next(stream: &mut super::WatchStream) -> Result<WatchEvent> {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => Err(EmberError::Internal("watch ended".into())),
        Err(_) => Err(EmberError::Internal("no watch event within 10 s".into())),
    }
}

async fn watches(store: &dyn MetaStore, p: &str) -> Result<()> {
    let before = store
        .put(&format!("{p}/x/0"), Bytes::from("old"), None)
        .await?;
    let mut stream = store.watch(&format!("{p}/x/"), before).await?;
    store
        .put(&format!("{p}/y"), Bytes::from("other prefix"), None)
        .await?;
    store
        .put(&format!("{p}/x/1"), Bytes::from("v"), None)
        .await?;
    store.delete(&format!("{p}/x/0")).await?;
    let first = next(&mut stream).await?;
    check(
        matches!(&first, WatchEvent::Put(kv) if kv.key == format!("{p}/x/1") && kv.value == "v"),
        "watch sees a put under its prefix, and nothing else",
    )?;
    let second = next(&mut stream).await?;
    check(
        matches!(&second, WatchEvent::Delete { key, .. } if *key == format!("{p}/x/0")),
        "watch sees a delete",
    )?;
    // Starting from an older revision replays what happened since.
    let mut replay = store.watch(&format!("{p}/x/"), before).await?;
    check(
        next(&mut replay).await? == first,
        "a watch replays from its revision",
    )?;
    Ok(())
}

async fn leases(store: &dyn MetaStore, p: &str) -> Result<()> {
    let lease = store.grant_lease(1).await?;
    let key = format!("{p}/member");
    let (_, rev) = store.range(&format!("{p}/")).await?;
    store.put(&key, Bytes::from("alive"), Some(lease)).await?;
    check(
        store.get(&key).await?.expect("put").lease == lease,
        "key carries its lease",
    )?;
    let mut stream = store.watch(&format!("{p}/"), rev).await?;
    check(
        matches!(next(&mut stream).await?, WatchEvent::Put(_)),
        "lease key put",
    )?;
    // Kept alive past its TTL, the key stays.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        check(
            store.keep_alive(lease).await? > 0,
            "keep-alive of a live lease",
        )?;
    }
    check(
        store.get(&key).await?.is_some(),
        "a kept-alive lease keeps its keys",
    )?;
    // Left alone, it expires and its key is deleted, which a watch sees.
    let gone = next(&mut stream).await?;
    check(
        matches!(&gone, WatchEvent::Delete { key: k, .. } if *k == key),
        "an expired lease deletes its keys",
    )?;
    check(
        store.keep_alive(lease).await? == 0,
        "keep-alive of an expired lease",
    )?;
    let refused = store
        .put(&format!("{p}/late"), Bytes::from("x"), Some(lease))
        .await;
    check(refused.is_err(), "a put on an expired lease fails")?;
    let lease = store.grant_lease(30).await?;
    store.put(&key, Bytes::from("again"), Some(lease)).await?;
    store.revoke(lease).await?;
    check(
        store.get(&key).await?.is_none(),
        "revoking a lease deletes its keys",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_store_conforms() {
        let store = super::super::MemoryStore::new();
        super::run(&store, "/test").await.unwrap();
    }
}
