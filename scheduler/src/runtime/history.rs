//! The history: queries and batch jobs that ended, kept in the store (`history/{id}`) after
//! their own records expire, so that `ember jobs list` shows them across restarts and
//! failovers; bounded by `--history-max-jobs` and `--history-max-age-hours`.

use ember_core::job::ScriptStatus;
use ember_core::meta::Op;
use ember_core::{Result, unix_ms};
use ember_proto::records::{decode_history, encode_history};
use tracing::warn;

use super::Scheduler;

/// Which entries of a history to drop: beyond `max_jobs` (the oldest first) or ended more than
/// `max_age_ms` before `now`. `ended` holds (end time, key).
pub(crate) fn to_drop(
    mut ended: Vec<(u64, String)>,
    max_jobs: usize,
    max_age_ms: u64,
    now: u64,
) -> Vec<String> {
    ended.sort();
    let excess = ended.len().saturating_sub(max_jobs);
    ended
        .into_iter()
        .enumerate()
        .filter(|(i, (finished, _))| *i < excess || now.saturating_sub(*finished) > max_age_ms)
        .map(|(_, (_, key))| key)
        .collect()
}

impl Scheduler {
    /// Records that `id` (a query or a batch job) ended, as the leader, then drops what is past
    /// the history's bounds.
    pub(crate) fn record_history(&self, id: &str) {
        if self.config.history_max_jobs == 0 {
            return;
        }
        let (Some(fence), Some(this)) = (self.fence(), self.self_ref()) else {
            return;
        };
        let id = id.to_string();
        self.spawn(async move {
            let Some(status) = this.scripts(Some(&id)).await.ok().and_then(|mut s| s.pop()) else {
                return;
            };
            let guard = super::journal::fence(&this.keys, fence);
            let op = Op::put(this.keys.history(&id), encode_history(&status, unix_ms()));
            if let Err(e) = this.store.txn(guard, vec![op]).await {
                warn!(job_id = %id, error = %e, "cannot keep the job in the history");
                return;
            }
            if let Err(e) = this.prune_history().await {
                warn!(error = %e, "cannot trim the history");
            }
        });
    }

    async fn prune_history(&self) -> Result<()> {
        let (entries, _) = self.store.range(&self.keys.history_prefix()).await?;
        let ended = entries
            .into_iter()
            .map(|kv| {
                let finished = decode_history(&kv.value).map_or(0, |(_, f)| f);
                (finished, kv.key)
            })
            .collect();
        let max_age_ms = self.config.history_max_age_hours.saturating_mul(3_600_000);
        for key in to_drop(ended, self.config.history_max_jobs, max_age_ms, unix_ms()) {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// Every job in the history.
    pub(crate) async fn history(&self) -> Result<Vec<ScriptStatus>> {
        let (entries, _) = self.store.range(&self.keys.history_prefix()).await?;
        Ok(entries
            .iter()
            .filter_map(|kv| decode_history(&kv.value).ok().map(|(status, _)| status))
            .collect())
    }

    /// One job of the history.
    pub(crate) async fn history_of(&self, id: &str) -> Result<Option<ScriptStatus>> {
        Ok(match self.store.get(&self.keys.history(id)).await? {
            Some(kv) => Some(decode_history(&kv.value)?.0),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_none_outlives_the_age() {
        let ended = |times: &[u64]| -> Vec<(u64, String)> {
            times.iter().map(|t| (*t, format!("k{t}"))).collect()
        };
        assert_eq!(to_drop(ended(&[30, 10, 20]), 2, 1000, 40), vec!["k10"]);
        assert_eq!(to_drop(ended(&[30, 10, 20]), 5, 15, 40), vec!["k10", "k20"]);
        assert!(to_drop(ended(&[30, 10, 20]), 3, 1000, 40).is_empty());
        assert_eq!(to_drop(ended(&[1, 2]), 0, 1000, 3).len(), 2);
    }
}
