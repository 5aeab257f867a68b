//! A seeded random interleaving of events — submissions, task reports (success, failure, fetch
//! failure), executors joining, draining and being lost, cancels, leadership changes, ticks —
//! with the driver's invariants checked after every step, and every job driven to an end.

use std::collections::BTreeMap;
use std::sync::Arc;

use ember_core::error::ErrorKind;
use ember_core::job::JobState;
use ember_core::{ExecutorId, JobId, StageId, TaskId};

use super::test_support::{TestEncoder, exec, failed, fetch_failed, graph, succeeded};
use super::*;

/// xorshift64*: a tiny deterministic generator, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The graphs jobs are drawn from: a chain, a join of two scans, a single stage.
const SHAPES: &[&[(StageId, usize, &[StageId])]] = &[
    &[(1, 3, &[]), (2, 2, &[1]), (3, 1, &[2])],
    &[(1, 2, &[]), (2, 2, &[]), (3, 2, &[1, 2]), (4, 1, &[3])],
    &[(1, 4, &[])],
];

struct World {
    d: Driver,
    rng: Rng,
    now: u64,
    fence: i64,
    /// Tasks launched and not yet reported, with their executors.
    running: BTreeMap<TaskId, ExecutorId>,
    executors: Vec<String>,
    next_executor: usize,
    jobs: Vec<JobId>,
}

impl World {
    fn new(seed: u64, policy: SchedulingPolicy) -> World {
        let config = DriverConfig {
            executor_timeout_ms: 1_000,
            result_ttl_ms: 60_000_000,
            policy,
        };
        let mut w = World {
            d: Driver::new(config, Arc::new(TestEncoder)),
            rng: Rng(seed | 1),
            now: 1_000,
            fence: 1,
            running: BTreeMap::new(),
            executors: Vec::new(),
            next_executor: 0,
            jobs: Vec::new(),
        };
        w.on(Event::LeadershipGained {
            fence: 1,
            jobs: Vec::new(),
            writes: Vec::new(),
        });
        w
    }

    fn on(&mut self, event: Event) {
        self.now += 1 + self.rng.below(50) as u64;
        let fx = self.d.handle(event, self.now);
        for effect in fx {
            match effect {
                Effect::Launch { executor, tasks } => {
                    for t in tasks {
                        self.running.insert(t.task_id, executor.id.clone());
                    }
                }
                Effect::CancelTasks { tasks, .. } => {
                    for t in tasks {
                        self.running.remove(&t);
                    }
                }
                Effect::Persist { fence, .. } => {
                    assert_eq!(
                        Some(fence),
                        self.d.fence(),
                        "records carry the current fence"
                    )
                }
                _ => {}
            }
        }
    }

    fn join(&mut self) {
        let id = format!("e{}", self.next_executor);
        self.next_executor += 1;
        let slots = 1 + self.rng.below(3) as u32;
        self.executors.push(id.clone());
        self.on(Event::ExecutorLeased {
            spec: exec(&id, slots),
            draining: false,
        });
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=9 => {
                let shape = SHAPES[self.rng.below(SHAPES.len())];
                let id = JobId::from(format!("job{}", self.jobs.len()));
                let options = JobOptions {
                    weight: 1 + self.rng.below(3) as u32,
                    max_task_attempts: 3,
                    ..JobOptions::default()
                };
                let job = Job::new(id.clone(), graph(shape), options, self.now);
                self.jobs.push(id);
                self.on(Event::JobSubmitted { job: Box::new(job) });
            }
            10..=54 => self.report_one(),
            55..=61 => self.join(),
            62..=66 if !self.executors.is_empty() => {
                let gone = self.executors.remove(self.rng.below(self.executors.len()));
                self.on(Event::ExecutorLeaseExpired {
                    executor: gone.into(),
                });
            }
            67..=69 if !self.executors.is_empty() => {
                let id = self.executors[self.rng.below(self.executors.len())].clone();
                self.on(Event::ExecutorLeased {
                    spec: exec(&id, 2),
                    draining: true,
                });
            }
            70..=72 if !self.jobs.is_empty() => {
                let job = self.jobs[self.rng.below(self.jobs.len())].clone();
                self.on(Event::Cancel { job });
            }
            73 => self.change_leader(),
            _ => self.on(Event::Tick),
        }
    }

    /// One running task reports (some reports are from executors already lost: zombies).
    fn report_one(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let n = self.rng.below(self.running.len());
        let (task, executor) = self
            .running
            .iter()
            .nth(n)
            .map(|(t, e)| (t.clone(), e.clone()))
            .expect("n < len");
        self.running.remove(&task);
        let report = match self.rng.below(10) {
            0 => failed(&task, executor.as_str(), ErrorKind::Internal),
            1 if task.stage_id > 1 && !self.executors.is_empty() => {
                let from = &self.executors[self.rng.below(self.executors.len())];
                fetch_failed(&task, executor.as_str(), from, task.stage_id - 1)
            }
            _ => succeeded(&task, executor.as_str()),
        };
        self.on(Event::TaskReports(vec![report]));
    }

    /// The leader loses its leadership and takes it back under a new fence, continuing the
    /// jobs from what it had (as records would hold them).
    fn change_leader(&mut self) {
        let stored: Vec<StoredJob> = self
            .d
            .jobs()
            .filter_map(|(_, e)| match e {
                JobEntry::Distributed(job) => Some(StoredJob {
                    record: job.record(),
                    plans: job
                        .stages
                        .iter()
                        .map(|(id, s)| (*id, Arc::clone(&s.plan)))
                        .collect(),
                    outputs: job
                        .stages
                        .keys()
                        .filter(|s| job.stages[*s].state == StageState::Completed)
                        .filter_map(|s| job.stage_output(*s).map(|o| (*s, o)))
                        .collect(),
                }),
                JobEntry::Inline(_) => None,
            })
            .collect();
        self.on(Event::LeadershipLost { fence: self.fence });
        self.fence += 1;
        // The old term's attempts are zombies now: their reports must change nothing.
        self.running.clear();
        let fence = self.fence;
        self.on(Event::LeadershipGained {
            fence,
            jobs: stored,
            writes: Vec::new(),
        });
    }

    /// Invariants that hold after every event.
    fn check(&self, seed: u64, step: usize) {
        let ctx = || format!("seed {seed}, step {step}");
        let alive: Vec<ExecutorId> = self.d.executor_ids();
        let mut per_executor: BTreeMap<ExecutorId, u32> = BTreeMap::new();
        for (_, entry) in self.d.jobs() {
            let JobEntry::Distributed(job) = entry else {
                continue;
            };
            for (id, stage) in &job.stages {
                for task in &stage.tasks {
                    if let TaskState::Running { executor, .. } = task {
                        assert!(
                            alive.contains(executor),
                            "{}: job {} stage {id} runs on lost executor {executor}",
                            ctx(),
                            job.id
                        );
                        assert!(
                            !job.state.is_terminal(),
                            "{}: a finished job has running tasks",
                            ctx()
                        );
                        *per_executor.entry(executor.clone()).or_default() += 1;
                    }
                }
                if stage.state == StageState::Running {
                    for input in &stage.inputs {
                        assert_eq!(
                            job.stages[input].state,
                            StageState::Completed,
                            "{}: job {} stage {id} runs before its input {input}",
                            ctx(),
                            job.id
                        );
                    }
                }
            }
        }
        for info in self.d.executors() {
            let counted = per_executor.get(&info.spec.id).copied().unwrap_or(0);
            assert_eq!(
                info.running_tasks,
                counted,
                "{}: slots of {} disagree with its running tasks",
                ctx(),
                info.spec.id
            );
            assert!(info.running_tasks <= info.spec.slots, "{}", ctx());
        }
    }

    /// Runs every job to an end: executors come, every launched task succeeds.
    fn finish(&mut self, seed: u64) {
        self.join();
        self.join();
        for round in 0..10_000 {
            let open: Vec<&JobId> = self
                .jobs
                .iter()
                .filter(|j| !self.d.status(j, self.now).unwrap().state.is_terminal())
                .collect();
            if open.is_empty() {
                return;
            }
            if self.running.is_empty() {
                self.on(Event::Tick);
                self.join();
                continue;
            }
            let (task, executor) = self.running.pop_first().expect("non-empty");
            self.on(Event::TaskReports(vec![succeeded(
                &task,
                executor.as_str(),
            )]));
            self.check(seed, 1_000_000 + round);
        }
        panic!("seed {seed}: jobs did not finish");
    }
}

#[test]
fn random_interleavings_keep_the_invariants_and_every_job_ends() {
    for seed in 1..=60u64 {
        let policy = if seed % 3 == 0 {
            SchedulingPolicy::Fifo
        } else {
            SchedulingPolicy::Fair
        };
        let mut w = World::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), policy);
        w.join();
        for step in 0..400 {
            w.step();
            w.check(seed, step);
        }
        w.finish(seed);
        for job in &w.jobs {
            let state = w.d.status(job, w.now).unwrap().state;
            assert!(
                matches!(
                    state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                ),
                "seed {seed}: job {job} ended {state:?}"
            );
        }
    }
}
