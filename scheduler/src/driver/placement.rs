//! The executors the driver knows, their free task slots, and how pending tasks are placed on
//! them: FIFO (the oldest job first) or fair sharing (running jobs share slots by weight).

use std::collections::BTreeMap;

use std::collections::VecDeque;

use ember_core::ExecutorId;
use ember_core::job::{ExecutorInfo, ExecutorSpec, TaskDefinition};
use ember_core::metrics::ExecutorMetrics;

use super::job::{Job, PendingTask};

#[derive(Debug, Clone)]
struct Entry {
    spec: ExecutorSpec,
    running: u32,
    metrics: ExecutorMetrics,
    last_seen_ms: u64,
    /// No new tasks: a launch to it failed (until it is heard from again), or it is draining.
    suspended: bool,
    /// Its liveness is a lease in the metadata store, not heartbeats.
    leased: bool,
    draining: bool,
}

#[derive(Debug, Default)]
pub struct Cluster {
    executors: BTreeMap<ExecutorId, Entry>,
    /// Tasks placed so far: orders jobs by when they last got a slot.
    launches: u64,
}

impl Cluster {
    /// An executor announced itself (or announced itself again after a restart).
    pub fn register(&mut self, spec: ExecutorSpec, now_ms: u64) {
        let id = spec.id.clone();
        self.executors.insert(
            id,
            Entry {
                spec,
                running: 0,
                metrics: ExecutorMetrics::default(),
                last_seen_ms: now_ms,
                suspended: false,
                leased: false,
                draining: false,
            },
        );
    }

    /// Liveness and counters; false when the executor is unknown (it must register again).
    pub fn heartbeat(&mut self, id: &ExecutorId, metrics: ExecutorMetrics, now_ms: u64) -> bool {
        match self.executors.get_mut(id) {
            Some(e) => {
                e.metrics = metrics;
                e.last_seen_ms = now_ms;
                e.suspended = false;
                true
            }
            None => false,
        }
    }

    /// Executors not heard from for `timeout_ms` (and not leased): removed and returned.
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<ExecutorId> {
        let gone: Vec<ExecutorId> = self
            .executors
            .iter()
            .filter(|(_, e)| !e.leased && now_ms.saturating_sub(e.last_seen_ms) > timeout_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.executors.remove(id);
        }
        gone
    }

    /// An executor whose liveness is its lease: it does not expire for want of heartbeats.
    pub fn register_leased(&mut self, spec: ExecutorSpec, now_ms: u64) {
        let id = spec.id.clone();
        self.register(spec, now_ms);
        if let Some(e) = self.executors.get_mut(&id) {
            e.leased = true;
        }
    }

    pub fn get(&self, id: &ExecutorId) -> Option<&ExecutorSpec> {
        self.executors.get(id).map(|e| &e.spec)
    }

    pub fn total_slots(&self) -> u32 {
        self.executors.values().map(|e| e.spec.slots).sum()
    }

    /// Task slots no task holds now.
    pub fn free_slots(&self) -> u32 {
        self.executors
            .values()
            .map(|e| e.spec.slots.saturating_sub(e.running))
            .sum()
    }

    /// Takes a slot on the executor with the most free slots (ties: lowest id), never on
    /// `avoid` unless it is the only executor that can take tasks.
    pub fn take_slot(&mut self, avoid: Option<&ExecutorId>) -> Option<ExecutorSpec> {
        let usable = |e: &Entry| !e.suspended && !e.draining;
        let avoid = avoid.filter(|a| {
            self.executors
                .values()
                .any(|e| usable(e) && &e.spec.id != *a)
        });
        let entry = self
            .executors
            .values_mut()
            .filter(|e| usable(e) && e.running < e.spec.slots)
            .filter(|e| Some(&e.spec.id) != avoid)
            .max_by(|a, b| {
                (a.spec.slots - a.running)
                    .cmp(&(b.spec.slots - b.running))
                    .then_with(|| b.spec.id.cmp(&a.spec.id))
            })?;
        entry.running += 1;
        Some(entry.spec.clone())
    }

    pub fn has_free_slot(&self) -> bool {
        self.executors
            .values()
            .any(|e| !e.suspended && !e.draining && e.running < e.spec.slots)
    }

    /// Forgets what runs where (a new leadership term: the jobs are restored from records).
    pub fn reset_slots(&mut self) {
        for e in self.executors.values_mut() {
            e.running = 0;
        }
    }

    /// Frees a slot taken by a task that finished (or never started).
    pub fn release_slot(&mut self, id: &ExecutorId) {
        if let Some(e) = self.executors.get_mut(id) {
            e.running = e.running.saturating_sub(1);
        }
    }

    /// A launch to the executor failed: give it no tasks until it is heard from again.
    pub fn suspend(&mut self, id: &ExecutorId) {
        if let Some(e) = self.executors.get_mut(id) {
            e.suspended = true;
        }
    }

    /// The executor is shutting down: it gets no new tasks.
    pub fn set_draining(&mut self, id: &ExecutorId, draining: bool) {
        if let Some(e) = self.executors.get_mut(id) {
            e.draining = draining;
        }
    }

    /// Removes an executor (its lease ended); returns whether it was known.
    pub fn remove(&mut self, id: &ExecutorId) -> bool {
        self.executors.remove(id).is_some()
    }

    pub fn infos(&self) -> Vec<ExecutorInfo> {
        self.executors
            .values()
            .map(|e| ExecutorInfo {
                spec: e.spec.clone(),
                metrics: e.metrics,
                running_tasks: e.running,
            })
            .collect()
    }

    pub fn ids(&self) -> Vec<ExecutorId> {
        self.executors.keys().cloned().collect()
    }

    pub fn contains(&self, id: &ExecutorId) -> bool {
        self.executors.contains_key(id)
    }

    pub fn addresses(&self) -> Vec<String> {
        self.executors
            .values()
            .map(|e| e.spec.address.clone())
            .collect()
    }
}

/// How running jobs share the cluster's task slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulingPolicy {
    /// Running jobs share slots in proportion to their weights: a job submitted while another
    /// fills the cluster gets the next free slots until it holds its share.
    #[default]
    Fair,
    /// The oldest job takes every slot it can use; later jobs get what is left.
    Fifo,
}

impl SchedulingPolicy {
    pub fn name(self) -> &'static str {
        match self {
            SchedulingPolicy::Fair => "fair",
            SchedulingPolicy::Fifo => "fifo",
        }
    }
}

impl std::str::FromStr for SchedulingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fair" => Ok(SchedulingPolicy::Fair),
            "fifo" => Ok(SchedulingPolicy::Fifo),
            other => Err(format!(
                "unknown scheduling policy `{other}`: use `fair` or `fifo`"
            )),
        }
    }
}

impl std::fmt::Display for SchedulingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A task to send to an executor.
#[derive(Debug, Clone)]
pub struct Launch {
    pub executor: ExecutorSpec,
    pub task: TaskDefinition,
}

/// One job competing for slots: its pending tasks in order, and what it holds.
struct Claim {
    index: usize,
    pending: VecDeque<PendingTask>,
    running: u64,
    weight: u64,
    /// When it last got a slot (the cluster's launch count then; 0: never).
    last_launch: u64,
}

/// Places pending tasks of `jobs` (in submission order) on free slots of `cluster`.
///
/// FIFO walks the jobs in order and gives each every slot it can use. Fair sharing gives each
/// free slot to the job furthest below its share — the fewest running tasks per unit of
/// weight; on a tie, the job that waited longest since it last got a slot, then the older one —
/// so a job submitted behind a long one starts as soon as a slot frees up (even a cluster of
/// one slot alternates between them), and jobs of equal weight converge on equal shares.
pub fn assign(
    policy: SchedulingPolicy,
    cluster: &mut Cluster,
    jobs: &mut [&mut Job],
) -> Vec<Launch> {
    let mut launches = Vec::new();
    let mut claims: Vec<Claim> = jobs
        .iter()
        .enumerate()
        .map(|(index, job)| Claim {
            index,
            pending: job.pending_tasks().into(),
            running: job.running_count() as u64,
            weight: job.weight.max(1) as u64,
            last_launch: job.last_launch,
        })
        .filter(|c| !c.pending.is_empty())
        .collect();
    while cluster.has_free_slot() {
        let next =
            match policy {
                SchedulingPolicy::Fifo => claims.iter_mut().find(|c| !c.pending.is_empty()),
                // running_a / weight_a < running_b / weight_b, without division.
                SchedulingPolicy::Fair => claims
                    .iter_mut()
                    .filter(|c| !c.pending.is_empty())
                    .min_by(|a, b| {
                        (a.running * b.weight)
                            .cmp(&(b.running * a.weight))
                            .then(a.last_launch.cmp(&b.last_launch))
                            .then(a.index.cmp(&b.index))
                    }),
            };
        let Some(claim) = next else { break };
        let task = claim.pending.pop_front().expect("non-empty");
        // A retry avoiding the only executor with free slots waits for another one.
        let Some(executor) = cluster.take_slot(task.avoid.as_ref()) else {
            continue;
        };
        claim.running += 1;
        cluster.launches += 1;
        claim.last_launch = cluster.launches;
        let job = &mut jobs[claim.index];
        job.last_launch = cluster.launches;
        let task_id = job.task_launched(task.stage, task.partition, &executor.id);
        let plan = job.stages[&task.stage]
            .launch_plan
            .clone()
            .expect("pending tasks belong to stages with a plan");
        launches.push(Launch {
            executor,
            task: TaskDefinition {
                task_id,
                plan,
                settings: job.settings.clone(),
                trace_parent: job.trace_parent.clone(),
            },
        });
    }
    launches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, slots: u32) -> ExecutorSpec {
        ExecutorSpec {
            id: id.into(),
            address: format!("{id}:1"),
            slots,
        }
    }

    #[test]
    fn slots_spread_over_executors_and_run_out() {
        let mut c = Cluster::default();
        c.register(spec("a", 2), 0);
        c.register(spec("b", 2), 0);
        let picks: Vec<String> = (0..4)
            .map(|_| c.take_slot(None).unwrap().id.to_string())
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        assert!(c.take_slot(None).is_none());
        c.release_slot(&"b".into());
        assert_eq!(c.take_slot(None).unwrap().id.as_str(), "b");
    }

    #[test]
    fn retries_avoid_an_executor_and_suspended_or_draining_ones_get_nothing() {
        let mut c = Cluster::default();
        c.register(spec("a", 2), 0);
        c.register(spec("b", 1), 0);
        assert_eq!(c.take_slot(Some(&"a".into())).unwrap().id.as_str(), "b");
        // b is full: a task avoiding a waits rather than going back to a.
        assert!(c.take_slot(Some(&"a".into())).is_none());
        c.suspend(&"b".into());
        assert_eq!(
            c.take_slot(Some(&"a".into())).unwrap().id.as_str(),
            "a",
            "a is all there is"
        );
        c.set_draining(&"a".into(), true);
        assert!(c.take_slot(None).is_none());
        c.set_draining(&"a".into(), false);
        c.release_slot(&"b".into());
        assert!(c.heartbeat(&"b".into(), ExecutorMetrics::default(), 1));
        assert_eq!(c.take_slot(Some(&"a".into())).unwrap().id.as_str(), "b");
    }

    #[test]
    fn silent_executors_expire_and_unknown_heartbeats_ask_to_reregister() {
        let mut c = Cluster::default();
        c.register(spec("a", 1), 0);
        c.register(spec("b", 1), 0);
        assert!(c.heartbeat(&"a".into(), ExecutorMetrics::default(), 900));
        assert_eq!(c.expire(1000, 500), vec![ExecutorId::from("b")]);
        assert!(!c.heartbeat(&"b".into(), ExecutorMetrics::default(), 1000));
        assert_eq!(c.ids(), vec![ExecutorId::from("a")]);
    }
}
