//! The driver, driven with plain values: events in, effects out, no network and no clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use ember_core::error::ErrorKind;
use ember_core::job::{JobState, TaskStatus};
use ember_core::records::{Record, WriteRecord, WriteSpec};
use ember_core::{JobId, StageId, TaskId};

use super::test_support::{TestEncoder, exec, failed, fetch_failed, graph, succeeded};
use super::*;

const FENCE: i64 = 7;

/// A driver that leads, and the time it was last told.
struct Harness {
    d: Driver,
    now: u64,
}

impl Harness {
    fn new(policy: SchedulingPolicy) -> Harness {
        let config = DriverConfig {
            executor_timeout_ms: 1_000,
            result_ttl_ms: 5_000,
            policy,
        };
        let mut h = Harness {
            d: Driver::new(config, Arc::new(TestEncoder)),
            now: 1_000_000,
        };
        h.lead(FENCE, Vec::new(), Vec::new());
        h
    }

    fn on(&mut self, event: Event) -> Vec<Effect> {
        self.now += 1;
        self.d.handle(event, self.now)
    }

    fn lead(&mut self, fence: i64, jobs: Vec<StoredJob>, writes: Vec<WriteRecord>) -> Vec<Effect> {
        self.on(Event::LeadershipGained {
            fence,
            jobs,
            writes,
        })
    }

    fn join(&mut self, id: &str, slots: u32) -> Vec<Effect> {
        self.on(Event::ExecutorLeased {
            spec: exec(id, slots),
            draining: false,
        })
    }

    fn lose(&mut self, id: &str) -> Vec<Effect> {
        self.on(Event::ExecutorLeaseExpired {
            executor: id.into(),
        })
    }

    fn submit(&mut self, id: &str, stages: &[(StageId, usize, &[StageId])]) -> Vec<Effect> {
        self.submit_with(id, stages, JobOptions::default())
    }

    fn submit_with(
        &mut self,
        id: &str,
        stages: &[(StageId, usize, &[StageId])],
        options: JobOptions,
    ) -> Vec<Effect> {
        let job = Job::new(id.into(), graph(stages), options, self.now);
        self.on(Event::JobSubmitted { job: Box::new(job) })
    }

    fn report(&mut self, reports: Vec<TaskStatus>) -> Vec<Effect> {
        self.on(Event::TaskReports(reports))
    }

    /// Reports every task of `fx`'s launches as succeeded on the executor it went to.
    fn succeed(&mut self, fx: &[Effect]) -> Vec<Effect> {
        let reports = launched(fx)
            .into_iter()
            .map(|(task, executor)| succeeded(&task, &executor))
            .collect();
        self.report(reports)
    }

    fn job(&self, id: &str) -> &Job {
        match self.d.job(&JobId::from(id)) {
            Some(JobEntry::Distributed(job)) => job,
            other => panic!("no distributed job {id}: {other:?}"),
        }
    }

    fn state(&self, id: &str) -> JobState {
        self.d.status(&id.into(), self.now).unwrap().state
    }
}

/// The tasks the effects launch, with their executors.
fn launched(fx: &[Effect]) -> Vec<(TaskId, String)> {
    fx.iter()
        .flat_map(|e| match e {
            Effect::Launch { executor, tasks } => tasks
                .iter()
                .map(|t| (t.task_id.clone(), executor.id.to_string()))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// `(job, stage, partition, executor)` of each launch, sorted.
fn launches(fx: &[Effect]) -> Vec<(String, StageId, u32, String)> {
    let mut out: Vec<_> = launched(fx)
        .into_iter()
        .map(|(t, e)| (t.job_id.to_string(), t.stage_id, t.partition, e))
        .collect();
    out.sort();
    out
}

fn cancelled(fx: &[Effect]) -> Vec<TaskId> {
    fx.iter()
        .flat_map(|e| match e {
            Effect::CancelTasks { tasks, .. } => tasks.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn records(fx: &[Effect]) -> Vec<&Record> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Persist { fence, record } => {
                assert_eq!(*fence, FENCE, "records are fenced on the leadership");
                Some(record)
            }
            _ => None,
        })
        .collect()
}

fn ended(fx: &[Effect]) -> Vec<(String, JobState)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::JobEnded { job, state, .. } => Some((job.to_string(), *state)),
            _ => None,
        })
        .collect()
}

fn owned(list: &[(&str, StageId, u32, &str)]) -> Vec<(String, StageId, u32, String)> {
    list.iter()
        .map(|(j, s, p, e)| (j.to_string(), *s, *p, e.to_string()))
        .collect()
}

#[test]
fn stages_advance_as_their_inputs_complete_and_each_completion_is_recorded() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 4);
    let fx = h.submit("j", &[(1, 2, &[]), (2, 2, &[]), (3, 1, &[1, 2])]);
    assert_eq!(
        launches(&fx),
        owned(&[
            ("j", 1, 0, "e1"),
            ("j", 1, 1, "e1"),
            ("j", 2, 0, "e1"),
            ("j", 2, 1, "e1"),
        ])
    );
    let tasks = launched(&fx);
    // Stage 1 done: recorded; stage 3 still waits for stage 2.
    let fx = h.report(vec![
        succeeded(&tasks[0].0, "e1"),
        succeeded(&tasks[1].0, "e1"),
    ]);
    assert!(launches(&fx).is_empty());
    assert!(matches!(records(&fx)[..], [Record::StageOutput(_, 1, _)]));
    let fx = h.report(vec![
        succeeded(&tasks[2].0, "e1"),
        succeeded(&tasks[3].0, "e1"),
    ]);
    assert_eq!(launches(&fx), owned(&[("j", 3, 0, "e1")]));
    let fx = h.succeed(&fx);
    let recorded = records(&fx);
    assert!(matches!(recorded[0], Record::StageOutput(_, 3, _)));
    assert!(matches!(recorded[1], Record::Job(r) if r.state == JobState::Succeeded));
    assert_eq!(ended(&fx), [("j".to_string(), JobState::Succeeded)]);
    assert_eq!(h.state("j"), JobState::Succeeded);
    assert_eq!(
        h.d.status(&"j".into(), h.now)
            .unwrap()
            .result_partitions
            .len(),
        2
    );
}

#[test]
fn a_failed_task_retries_on_another_executor_until_the_attempt_limit() {
    // (failures reported, attempt limit, job state after them, executors the attempts ran on)
    let cases: &[(usize, u32, JobState, &[&str])] = &[
        (1, 3, JobState::Running, &["e1", "e2"]),
        (2, 3, JobState::Running, &["e1", "e2", "e1"]),
        (3, 3, JobState::Failed, &["e1", "e2", "e1"]),
        (1, 1, JobState::Failed, &["e1"]),
    ];
    for (failures, limit, state, placed) in cases {
        let mut h = Harness::new(SchedulingPolicy::Fair);
        h.join("e1", 1);
        h.join("e2", 1);
        let options = JobOptions {
            max_task_attempts: *limit,
            ..JobOptions::default()
        };
        let mut fx = h.submit_with("j", &[(1, 1, &[])], options);
        let mut ran_on = Vec::new();
        for _ in 0..*failures {
            let (task, executor) = launched(&fx).pop().expect("a launch");
            ran_on.push(executor.clone());
            fx = h.report(vec![failed(&task, &executor, ErrorKind::Internal)]);
        }
        ran_on.extend(launched(&fx).into_iter().map(|(_, e)| e));
        assert_eq!(h.state("j"), *state, "{failures} failures, limit {limit}");
        assert_eq!(ran_on, *placed, "{failures} failures, limit {limit}");
        if *state == JobState::Failed {
            let status = h.d.status(&"j".into(), h.now).unwrap();
            assert_eq!(status.error_kind, Some(ErrorKind::Internal));
            assert!(status.error.unwrap().contains("boom"));
            assert!(fx.iter().any(|e| matches!(e, Effect::RemoveData { .. })));
        }
    }
}

#[test]
fn user_errors_fail_at_once_and_resource_exhaustion_keeps_its_kind() {
    let cases = [
        (ErrorKind::User, 1, JobState::Failed),
        (ErrorKind::ResourcesExhausted, 1, JobState::Running),
        (ErrorKind::ResourcesExhausted, 4, JobState::Failed),
    ];
    for (kind, failures, state) in cases {
        let mut h = Harness::new(SchedulingPolicy::Fair);
        h.join("e1", 1);
        let mut fx = h.submit("j", &[(1, 1, &[])]);
        for _ in 0..failures {
            let (task, executor) = launched(&fx).pop().expect("a launch");
            fx = h.report(vec![failed(&task, &executor, kind)]);
        }
        assert_eq!(h.state("j"), state, "{kind} x{failures}");
        if state == JobState::Failed {
            assert_eq!(h.job("j").error_kind, Some(kind));
        }
    }
}

#[test]
fn losing_an_executor_recomputes_only_the_map_outputs_still_needed() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 1);
    h.join("e2", 1);
    // 1 → 2 (final); stage 1's two tasks land one on each executor.
    let fx = h.submit("j", &[(1, 2, &[]), (2, 2, &[1])]);
    assert_eq!(
        launches(&fx),
        owned(&[("j", 1, 0, "e1"), ("j", 1, 1, "e2")])
    );
    let fx = h.succeed(&fx);
    assert_eq!(
        launches(&fx),
        owned(&[("j", 2, 0, "e1"), ("j", 2, 1, "e2")])
    );
    let stage2 = launched(&fx);
    // e1 dies: its stage-2 task reruns, stage 2's other task (reading e1's output) is
    // cancelled, and only stage 1's output held by e1 is recomputed — on e2.
    let fx = h.lose("e1");
    let cancels = cancelled(&fx);
    assert_eq!(cancels.len(), 1);
    assert_eq!((cancels[0].stage_id, cancels[0].partition), (2, 1));
    assert_eq!(launches(&fx), owned(&[("j", 1, 0, "e2")]));
    let fx = h.succeed(&fx);
    assert_eq!(
        launches(&fx).iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(),
        [(2, 0)],
        "one slot: stage 2 runs again one task at a time"
    );
    // A late report of the cancelled attempt changes nothing.
    assert!(h.report(vec![succeeded(&stage2[1].0, "e2")]).is_empty());
    let fx = h.succeed(&fx);
    let fx = h.succeed(&fx);
    assert_eq!(ended(&fx), [("j".to_string(), JobState::Succeeded)]);
    let launches_per_stage: Vec<u32> = h
        .job("j")
        .stage_statuses()
        .iter()
        .map(|s| s.launches)
        .collect();
    assert_eq!(
        launches_per_stage,
        [3, 4],
        "only e1's stage-1 output ran twice"
    );
}

#[test]
fn a_fetch_failure_recomputes_the_producer_and_retries_the_reader() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 2);
    h.join("e2", 2);
    let fx = h.submit("j", &[(1, 2, &[]), (2, 1, &[1])]);
    let fx = h.succeed(&fx);
    let (reader, on) = launched(&fx).pop().unwrap();
    // The stage-1 output on e1 cannot be fetched: only that map task runs again.
    let fx = h.report(vec![fetch_failed(&reader, &on, "e1", 1)]);
    assert_eq!(launches(&fx).len(), 1);
    assert_eq!(launches(&fx)[0].1, 1);
    let fx = h.succeed(&fx);
    assert_eq!(launches(&fx)[0].1, 2, "the reader retries");
    h.succeed(&fx);
    assert_eq!(h.state("j"), JobState::Succeeded);
}

#[test]
fn a_report_from_an_executor_whose_lease_expired_is_ignored() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 1);
    h.join("e2", 1);
    let fx = h.submit("j", &[(1, 1, &[])]);
    let (task, on) = launched(&fx).pop().unwrap();
    assert_eq!(on, "e1");
    let fx = h.lose("e1");
    let (again, on_e2) = launched(&fx).pop().unwrap();
    assert_eq!(on_e2, "e2");
    // The zombie finishes after its lease expired: ignored, even once it registers again.
    assert!(h.report(vec![succeeded(&task, "e1")]).is_empty());
    h.join("e1", 1);
    assert!(h.report(vec![succeeded(&task, "e1")]).is_empty());
    assert_eq!(h.state("j"), JobState::Running);
    h.report(vec![succeeded(&again, "e2")]);
    assert_eq!(h.state("j"), JobState::Succeeded);
}

#[test]
fn a_draining_executor_gets_no_new_tasks_but_finishes_its_own() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 1);
    let fx = h.submit("j", &[(1, 2, &[])]);
    let first = launched(&fx);
    assert_eq!(first.len(), 1);
    h.on(Event::ExecutorLeased {
        spec: exec("e1", 1),
        draining: true,
    });
    let fx = h.succeed(&fx);
    assert!(
        launches(&fx).is_empty(),
        "nothing new on a draining executor"
    );
    assert_eq!(h.job("j").tasks_completed(), 1, "its running task finished");
    let fx = h.join("e2", 1);
    assert_eq!(launches(&fx), owned(&[("j", 1, 1, "e2")]));
}

#[test]
fn cancelling_mid_stage_stops_its_tasks_and_records_the_end() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 2);
    let fx = h.submit("j", &[(1, 3, &[])]);
    let running = launched(&fx);
    let fx = h.report(vec![succeeded(&running[0].0, "e1")]);
    assert_eq!(
        launched(&fx).len(),
        1,
        "the third task takes the freed slot"
    );
    let fx = h.on(Event::Cancel { job: "j".into() });
    assert_eq!(cancelled(&fx).len(), 2);
    assert!(launched(&fx).is_empty());
    assert!(matches!(records(&fx)[..], [Record::Job(r)] if r.state == JobState::Cancelled));
    assert!(fx.iter().any(|e| matches!(e, Effect::RemoveData { .. })));
    assert_eq!(ended(&fx), [("j".to_string(), JobState::Cancelled)]);
    // Late reports and a second cancel change nothing; the slots are free again.
    assert!(h.report(vec![succeeded(&running[1].0, "e1")]).is_empty());
    assert!(h.on(Event::Cancel { job: "j".into() }).is_empty());
    let fx = h.submit("k", &[(1, 2, &[])]);
    assert_eq!(launched(&fx).len(), 2);
}

/// Applies recorded facts as the store would keep them.
#[derive(Default)]
struct Store {
    jobs: BTreeMap<JobId, ember_core::records::JobRecord>,
    outputs: BTreeMap<(JobId, StageId), ember_core::records::StageOutput>,
}

impl Store {
    fn apply(&mut self, fx: &[Effect]) {
        for record in records(fx) {
            match record.clone() {
                Record::Job(r) => {
                    self.jobs.insert(r.job_id.clone(), *r);
                }
                Record::StageOutput(job, stage, out) => {
                    self.outputs.insert((job, stage), out);
                }
                Record::Remove(job) => {
                    self.jobs.remove(&job);
                    self.outputs.retain(|(j, _), _| *j != job);
                }
                Record::WriteDone(_) => {}
            }
        }
    }

    /// What a new leader reads back (the plans are the test graph's again).
    fn stored(&self, stages: &[(StageId, usize, &[StageId])]) -> Vec<StoredJob> {
        self.jobs
            .values()
            .map(|record| StoredJob {
                record: record.clone(),
                plans: graph(stages)
                    .stages
                    .into_iter()
                    .map(|(id, s)| (id, s.plan))
                    .collect(),
                outputs: self
                    .outputs
                    .iter()
                    .filter(|((j, _), _)| *j == record.job_id)
                    .map(|((_, s), o)| (*s, o.clone()))
                    .collect(),
            })
            .collect()
    }
}

#[test]
fn a_new_leader_resumes_a_job_from_its_journal_rerunning_only_what_was_lost() {
    let stages: &[(StageId, usize, &[StageId])] = &[(1, 2, &[]), (2, 1, &[1])];
    // (executors still alive at the takeover, stage-1 tasks the new leader runs again)
    let cases: &[(&[&str], usize)] = &[(&["e1", "e2"], 0), (&["e2"], 1)];
    for (alive, rerun) in cases {
        let mut old = Harness::new(SchedulingPolicy::Fair);
        let mut store = Store::default();
        old.join("e1", 1);
        old.join("e2", 1);
        let job = Job::new("j".into(), graph(stages), JobOptions::default(), old.now);
        store.apply(&[Effect::Persist {
            fence: FENCE,
            record: Record::Job(Box::new(job.record())),
        }]);
        let fx = old.on(Event::JobSubmitted { job: Box::new(job) });
        let fx = old.succeed(&fx);
        store.apply(&fx);
        assert!(store.outputs.contains_key(&("j".into(), 1)));
        // The leader dies with stage 2 running; a new one takes over from the records.
        let mut new = Harness::new(SchedulingPolicy::Fair);
        new.on(Event::ExecutorsListed {
            executors: alive.iter().map(|e| (exec(e, 1), false)).collect(),
        });
        let fx = new.lead(FENCE + 1, store.stored(stages), Vec::new());
        let stages_launched: Vec<StageId> = launches(&fx).iter().map(|l| l.1).collect();
        if *rerun == 0 {
            assert_eq!(stages_launched, [2], "alive: {alive:?}");
        } else {
            assert_eq!(stages_launched, vec![1; *rerun], "alive: {alive:?}");
        }
        // Attempts of the new term never collide with the old leader's.
        let (task, _) = launched(&fx).pop().unwrap();
        assert!(task.attempt >= attempt_base(FENCE + 1));
        let mut fx = fx;
        while new.state("j") == JobState::Running {
            fx = new.succeed(&fx);
        }
        assert_eq!(new.state("j"), JobState::Succeeded);
    }
}

fn write_options() -> JobOptions {
    JobOptions {
        write: Some(WriteSpec {
            target: "file:///out/".into(),
            staging_root: "file:///out/_ember_staging/w".into(),
            stage: 1,
            single_file: None,
            replace: false,
        }),
        ..JobOptions::default()
    }
}

fn commit_of(fx: &[Effect]) -> Option<(JobId, Vec<String>, bool)> {
    fx.iter().find_map(|e| match e {
        Effect::Commit {
            job,
            dirs,
            recorded,
            ..
        } => Some((job.clone(), dirs.clone(), *recorded)),
        _ => None,
    })
}

#[test]
fn a_write_commits_after_its_stages_and_rolls_forward_on_a_new_leader() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 2);
    let fx = h.submit_with("w", &[(1, 2, &[])], write_options());
    let fx = h.succeed(&fx);
    let (job, dirs, recorded) = commit_of(&fx).expect("a commit");
    assert_eq!(job.as_str(), "w");
    assert_eq!(dirs.len(), 2, "one staging folder per task");
    assert!(!recorded);
    assert!(
        ended(&fx).is_empty(),
        "not done for clients before the commit"
    );
    assert_eq!(h.state("w"), JobState::Running);
    h.on(Event::CommitStarted { job: job.clone() });
    assert!(
        h.on(Event::Cancel { job: job.clone() }).is_empty(),
        "past cancelling"
    );
    let fx = h.on(Event::CommitFinished { job: job.clone() });
    let recorded = records(&fx);
    assert!(matches!(recorded[0], Record::Job(r) if r.state == JobState::Succeeded));
    assert!(matches!(recorded[1], Record::WriteDone(j) if *j == job));
    assert!(fx.iter().any(|e| matches!(e, Effect::CleanStaging { .. })));
    assert_eq!(h.state("w"), JobState::Succeeded);

    // A leader that finds the commit recorded redoes it from the record, and nothing runs.
    let mut next = Harness::new(SchedulingPolicy::Fair);
    next.join("e1", 2);
    let mut store = Store::default();
    let running = Job::new("w".into(), graph(&[(1, 2, &[])]), write_options(), 0);
    store.apply(&[Effect::Persist {
        fence: FENCE,
        record: Record::Job(Box::new(running.record())),
    }]);
    let write = WriteRecord {
        job_id: "w".into(),
        spec: write_options().write.unwrap(),
        staged_dirs: dirs.clone(),
        replaced_files: Vec::new(),
    };
    let fx = next.lead(FENCE + 1, store.stored(&[(1, 2, &[])]), vec![write]);
    assert_eq!(commit_of(&fx), Some(("w".into(), dirs, true)));
    assert!(launched(&fx).is_empty(), "a recorded commit runs no task");
    assert_eq!(next.state("w"), JobState::Running);
    next.on(Event::CommitFinished { job: "w".into() });
    assert_eq!(next.state("w"), JobState::Succeeded);
}

#[test]
fn a_restored_write_whose_staged_files_are_unknown_fails_clearly() {
    // Stage 1 writes; stage 2 (final) read its output and completed before the failover, but
    // stage 1's output record is missing: nothing reads stage 1 any more, so it is not rerun,
    // and which attempt's files to commit is not known.
    let stages: &[(StageId, usize, &[StageId])] = &[(1, 2, &[]), (2, 1, &[1])];
    let mut old = Harness::new(SchedulingPolicy::Fair);
    old.join("e1", 2);
    old.join("e2", 1);
    let job = Job::new("w".into(), graph(stages), write_options(), old.now);
    let mut store = Store::default();
    store.apply(&[Effect::Persist {
        fence: FENCE,
        record: Record::Job(Box::new(job.record())),
    }]);
    let fx = old.on(Event::JobSubmitted { job: Box::new(job) });
    let fx = old.succeed(&fx);
    store.apply(&fx);
    let fx = old.succeed(&fx);
    store.apply(&fx);
    store.outputs.remove(&("w".into(), 1));
    let mut new = Harness::new(SchedulingPolicy::Fair);
    new.join("e1", 2);
    new.join("e2", 1);
    let fx = new.lead(FENCE + 1, store.stored(stages), Vec::new());
    assert!(commit_of(&fx).is_none());
    assert_eq!(new.state("w"), JobState::Failed);
    let status = new.d.status(&"w".into(), new.now).unwrap();
    assert!(status.error.unwrap().contains("nothing was committed"));
    assert!(fx.iter().any(|e| matches!(e, Effect::CleanStaging { .. })));
}

#[test]
fn a_permanent_commit_error_fails_the_job() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 2);
    let fx = h.submit_with("w", &[(1, 1, &[])], write_options());
    let fx = h.succeed(&fx);
    let (job, _, _) = commit_of(&fx).unwrap();
    h.on(Event::CommitStarted { job: job.clone() });
    let fx = h.on(Event::CommitFailed {
        job: job.clone(),
        error: "object store: permission denied".into(),
    });
    assert_eq!(ended(&fx), [("w".to_string(), JobState::Failed)]);
    let recorded = records(&fx);
    assert!(matches!(recorded[0], Record::Job(r) if r.state == JobState::Failed));
    assert!(matches!(recorded[1], Record::WriteDone(_)));
    let status = h.d.status(&job, h.now).unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("permission denied"));
}

#[test]
fn fair_sharing_gives_a_new_job_the_next_free_slots_and_fifo_does_not() {
    // (policy, weight of the short job, slots it holds once 4 of the long job's tasks end)
    let cases = [
        (SchedulingPolicy::Fair, 1, 2),
        (SchedulingPolicy::Fair, 3, 3),
        (SchedulingPolicy::Fifo, 1, 0),
    ];
    for (policy, weight, short_slots) in cases {
        let mut h = Harness::new(policy);
        h.join("e1", 4);
        let long = h.submit("long", &[(1, 40, &[])]);
        assert_eq!(launched(&long).len(), 4, "the long job fills the cluster");
        let options = JobOptions {
            weight,
            ..JobOptions::default()
        };
        let fx = h.submit_with("short", &[(1, 3, &[])], options);
        assert!(launched(&fx).is_empty(), "no slot is free yet");
        // The long job's first wave ends task by task; each freed slot goes by the policy.
        let mut short = 0;
        for (task, executor) in launched(&long) {
            let fx = h.report(vec![succeeded(&task, &executor)]);
            short += launches(&fx).iter().filter(|l| l.0 == "short").count();
        }
        assert_eq!(short, short_slots, "{policy} weight {weight}");
    }
}

#[test]
fn on_one_slot_fair_sharing_alternates_between_jobs() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 1);
    let mut fx = h.submit("long", &[(1, 10, &[])]);
    h.submit("short", &[(1, 2, &[])]);
    let mut order = Vec::new();
    while let Some((task, executor)) = launched(&fx).pop() {
        order.push(task.job_id.to_string());
        fx = h.report(vec![succeeded(&task, &executor)]);
    }
    assert_eq!(order[..5], ["long", "short", "long", "short", "long"]);
    assert_eq!(order.len(), 12);
}

#[test]
fn weighted_jobs_share_an_idle_cluster_in_proportion() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    // Both jobs are known before any executor offers slots.
    h.submit_with(
        "a",
        &[(1, 20, &[])],
        JobOptions {
            weight: 1,
            ..JobOptions::default()
        },
    );
    h.submit_with(
        "b",
        &[(1, 20, &[])],
        JobOptions {
            weight: 3,
            ..JobOptions::default()
        },
    );
    let fx = h.join("e1", 8);
    let per_job = |job: &str| launches(&fx).iter().filter(|l| l.0 == job).count();
    assert_eq!((per_job("a"), per_job("b")), (2, 6));
}

#[test]
fn time_fails_jobs_without_executors_and_expires_finished_ones() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.submit("j", &[(1, 1, &[])]);
    h.on(Event::Tick);
    h.now += 900;
    h.on(Event::Tick);
    assert_eq!(
        h.state("j"),
        JobState::Running,
        "within the executor timeout"
    );
    h.now += 200;
    let fx = h.on(Event::Tick);
    assert_eq!(h.state("j"), JobState::Failed);
    assert_eq!(h.job("j").error_kind, Some(ErrorKind::Unavailable));
    assert!(ended(&fx).len() == 1);
    // The finished job's status stays for the result TTL, then its record goes.
    h.now += 4_000;
    assert!(h.on(Event::Tick).is_empty());
    h.now += 2_000;
    let fx = h.on(Event::Tick);
    assert!(matches!(records(&fx)[..], [Record::Remove(j)] if j.as_str() == "j"));
    assert!(h.d.status(&"j".into(), h.now).is_err());
    // Executors that registered over gRPC and went silent are lost.
    h.on(Event::ExecutorRegistered {
        spec: exec("e9", 1),
    });
    h.now += 2_000;
    h.on(Event::Tick);
    assert!(!h.d.executor_known(&"e9".into()));
}

#[test]
fn a_deposed_leader_forgets_its_jobs_and_records_nothing() {
    let mut h = Harness::new(SchedulingPolicy::Fair);
    h.join("e1", 1);
    let fx = h.submit("j", &[(1, 1, &[])]);
    let (task, _) = launched(&fx).pop().unwrap();
    h.on(Event::LeadershipLost { fence: FENCE });
    assert_eq!(h.d.fence(), None);
    assert!(h.report(vec![succeeded(&task, "e1")]).is_empty());
    assert!(h.d.job(&"j".into()).is_none());
    // A job submitted under the old leadership is not taken.
    assert!(h.submit("k", &[(1, 1, &[])]).is_empty());
    assert!(h.d.job(&"k".into()).is_none());
}
