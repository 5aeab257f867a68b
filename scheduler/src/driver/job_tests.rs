//! Unit tests of one job's state machine: stage order, retries, lost outputs, zombies.

use bytes::Bytes;
use ember_core::error::ErrorKind;
use ember_core::job::{JobState, PartitionStats, TaskOutcome, TaskStatus};
use ember_core::{StageId, TaskId};

use super::job::{Job, JobEvent, JobOptions, TaskState};
use super::test_support::graph;

fn job(stages: &[(StageId, usize, &[StageId])]) -> Job {
    Job::new("j".into(), graph(stages), JobOptions::default(), 0)
}

fn start(job: &mut Job) -> Vec<StageId> {
    let started = job.start_ready_stages();
    for s in &started {
        job.set_launch_plan(*s, Bytes::from_static(b"plan"));
    }
    started
}

/// The attempt a task is running as (reports must name it).
fn attempt(job: &Job, stage: StageId, partition: u32) -> u32 {
    match &job.stages[&stage].tasks[partition as usize] {
        TaskState::Running { attempt, .. } => *attempt,
        _ => u32::MAX,
    }
}

fn report(
    job: &Job,
    stage: StageId,
    partition: u32,
    executor: &str,
    outcome: TaskOutcome,
) -> TaskStatus {
    TaskStatus {
        task_id: TaskId {
            job_id: "j".into(),
            stage_id: stage,
            partition,
            attempt: attempt(job, stage, partition),
        },
        executor_id: executor.into(),
        outcome,
    }
}

fn ok(job: &Job, stage: StageId, partition: u32, executor: &str, rows: &[u64]) -> TaskStatus {
    let partitions = rows
        .iter()
        .map(|r| PartitionStats {
            rows: *r,
            bytes: r * 10,
        })
        .collect();
    report(
        job,
        stage,
        partition,
        executor,
        TaskOutcome::Succeeded {
            partitions,
            rows_scanned: 1,
            metrics: super::test_support::task_metrics(),
        },
    )
}

fn failed(
    job: &Job,
    stage: StageId,
    partition: u32,
    executor: &str,
    kind: ErrorKind,
) -> TaskStatus {
    let outcome = TaskOutcome::Failed {
        message: "boom".into(),
        kind,
    };
    report(job, stage, partition, executor, outcome)
}

fn launch_all(job: &mut Job, executor: &str) {
    for t in job.pending_tasks() {
        job.task_launched(t.stage, t.partition, &executor.into());
    }
}

/// Runs every pending task of `stage` on `executor` to success.
fn finish_stage(job: &mut Job, stage: StageId, executor: &str, now: u64) -> Vec<JobEvent> {
    let pending: Vec<usize> = job
        .pending_tasks()
        .into_iter()
        .filter(|t| t.stage == stage)
        .map(|t| t.partition)
        .collect();
    let mut events = Vec::new();
    for p in pending {
        job.task_launched(stage, p, &executor.into());
        let status = ok(job, stage, p as u32, executor, &[1, 1]);
        events.push(job.task_finished(&status, "addr", now).unwrap());
    }
    events
}

/// Runs task `p` of `stage` on `executors[p]`, each to success; returns the last event.
fn run_on(job: &mut Job, stage: StageId, executors: &[&str], now: u64) -> Option<JobEvent> {
    for (p, e) in executors.iter().enumerate() {
        job.task_launched(stage, p, &(*e).into());
    }
    let mut last = None;
    for (p, e) in executors.iter().enumerate() {
        let status = ok(job, stage, p as u32, e, &[1, 1]);
        last = job.task_finished(&status, &format!("addr-{e}"), now);
    }
    last
}

#[test]
fn stages_run_in_dependency_order_and_the_job_succeeds() {
    let mut j = job(&[(1, 2, &[]), (2, 2, &[]), (3, 1, &[1, 2])]);
    assert_eq!(start(&mut j), vec![1, 2]);
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.pending_tasks().len(), 4);
    launch_all(&mut j, "e1");
    assert!(j.pending_tasks().is_empty());
    let first = ok(&j, 1, 0, "e1", &[1, 0]);
    let wrong_executor = ok(&j, 1, 1, "e2", &[1, 0]);
    assert_eq!(j.task_finished(&first, "addr", 5), Some(JobEvent::None));
    assert_eq!(
        j.task_finished(&first, "addr", 5),
        None,
        "duplicate ignored"
    );
    assert_eq!(j.task_finished(&wrong_executor, "addr", 5), None);
    let steps = [
        (1, 1, vec![0, 2], JobEvent::StageCompleted(1)),
        (2, 0, vec![3, 3], JobEvent::None),
        (2, 1, vec![0, 0], JobEvent::StageCompleted(2)),
    ];
    for (stage, p, rows, expected) in steps {
        let status = ok(&j, stage, p, "e1", &rows);
        assert_eq!(
            j.task_finished(&status, "addr", 5),
            Some(expected),
            "{status:?}"
        );
    }
    // Stage 1's output: partition 0 from map 0, partition 1 from map 1; empty ones skipped.
    let locs = j.output_locations(1).unwrap();
    assert_eq!(locs[0].len(), 1);
    assert_eq!(locs[0][0].map_partition, 0);
    assert_eq!(locs[1][0].map_partition, 1);
    assert_eq!(start(&mut j), vec![3]);
    launch_all(&mut j, "e1");
    let last = ok(&j, 3, 0, "e1", &[7, 0]);
    assert_eq!(j.task_finished(&last, "addr", 9), Some(JobEvent::Succeeded));
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.finished_ms, Some(9));
    assert_eq!(j.rows_scanned, 5);
    assert_eq!(j.tasks_completed(), 5);
    // What the tasks measured adds up per stage and for the job.
    let stage = j.stage_metrics(1);
    assert_eq!(
        (stage.tasks, stage.compute_ns, stage.task_ms),
        (2, 2_000, vec![5, 5])
    );
    let used = j.resources(100);
    assert_eq!(used.compute_ns, 5_000, "five tasks");
    assert_eq!(used.peak_task_memory_bytes, 64);
    assert_eq!(
        used.wall_ms, 9,
        "from submission (0) to the end (9), not to now"
    );
    assert_eq!(used.shuffle_bytes, j.shuffle_bytes());
    let report = super::analyze::render(&j);
    assert!(
        report.contains("Stage 3 (tasks=1, inputs=[1, 2]) [final]"),
        "{report}"
    );
    assert!(report.contains("output=7 rows"), "{report}");
}

#[test]
fn a_task_keeps_its_last_failure_and_the_stage_its_wall_time() {
    let mut j = job(&[(1, 1, &[])]);
    start(&mut j);
    launch_all(&mut j, "e1");
    let s = failed(&j, 1, 0, "e1", ErrorKind::Internal);
    j.task_finished(&s, "a", 3).unwrap();
    let info = &j.stages[&1].info[0];
    assert!(
        info.last_error.as_deref().unwrap().contains("boom"),
        "{info:?}"
    );
    assert_eq!(info.finished_ms, Some(3));
    // Launch times come from the driver's placement; a stage without them has no wall time.
    assert_eq!(j.stage_wall_ms(1), None);
    j.stages.get_mut(&1).unwrap().info[0].launched(7, 10);
    launch_all(&mut j, "e2");
    let done = ok(&j, 1, 0, "e2", &[1]);
    j.task_finished(&done, "a", 25).unwrap();
    assert_eq!(j.stage_wall_ms(1), Some(15));
    assert_eq!(
        j.stage_metrics(1).tasks,
        1,
        "only the attempt that succeeded is measured"
    );
}

#[test]
fn user_errors_fail_the_job_and_late_reports_change_nothing() {
    type Step = fn(&mut Job) -> Option<JobEvent>;
    let cases: &[(&str, Step, JobState)] = &[
        (
            "task fails with a user error",
            |j| {
                let s = failed(j, 1, 0, "e1", ErrorKind::User);
                j.task_finished(&s, "a", 1)
            },
            JobState::Failed,
        ),
        (
            "unrelated executor lost",
            |j| Some(j.executor_lost(&"e9".into())),
            JobState::Running,
        ),
        (
            "cancelled",
            |j| {
                j.cancel(1);
                None
            },
            JobState::Cancelled,
        ),
    ];
    for (name, step, state) in cases {
        let mut j = job(&[(1, 2, &[]), (2, 1, &[1])]);
        start(&mut j);
        launch_all(&mut j, "e1");
        let late = ok(&j, 1, 1, "e1", &[1, 1]);
        step(&mut j);
        assert_eq!(j.state, *state, "{name}");
        if state.is_terminal() {
            assert!(j.pending_tasks().is_empty(), "{name}");
            assert_eq!(j.task_finished(&late, "a", 2), None, "{name}");
        }
    }
    let mut j = job(&[(1, 2, &[]), (2, 1, &[1])]);
    start(&mut j);
    launch_all(&mut j, "e1");
    j.cancel(3);
    assert_eq!(j.stop_running().len(), 2, "the running tasks are stopped");
    assert_eq!(j.running_count(), 0);
}

#[test]
fn failed_tasks_retry_elsewhere_up_to_the_limit() {
    let mut j = job(&[(1, 1, &[])]);
    j.max_task_attempts = 3;
    start(&mut j);
    for round in 1..=3u64 {
        launch_all(&mut j, "e1");
        let s = failed(&j, 1, 0, "e1", ErrorKind::Internal);
        let event = j.task_finished(&s, "a", round).unwrap();
        if round < 3 {
            assert_eq!(event, JobEvent::Retry);
            let pending = j.pending_tasks();
            assert_eq!(pending[0].avoid, Some("e1".into()), "retry avoids e1");
        } else {
            assert!(
                matches!(&event, JobEvent::Failed(m) if m.contains("failed 3 times") && m.contains("boom")),
                "{event:?}"
            );
        }
    }
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.stage_statuses()[0].launches, 3);
}

#[test]
fn a_zombie_attempt_is_ignored_after_its_executor_was_lost() {
    let mut j = job(&[(1, 1, &[])]);
    start(&mut j);
    launch_all(&mut j, "e1");
    let zombie = ok(&j, 1, 0, "e1", &[1, 1]);
    assert_eq!(j.executor_lost(&"e1".into()), JobEvent::Recompute);
    launch_all(&mut j, "e1"); // the same executor came back under the same id
    assert_eq!(
        j.task_finished(&zombie, "a", 1),
        None,
        "old attempt ignored"
    );
    let fresh = ok(&j, 1, 0, "e1", &[1, 1]);
    assert_eq!(j.task_finished(&fresh, "a", 2), Some(JobEvent::Succeeded));
}

#[test]
fn losing_an_executor_recomputes_only_the_outputs_still_needed() {
    // 1 → 2 → 3 (final); stage 1 runs on e1 and e2, stage 2 completes, stage 3 is running.
    let mut j = job(&[(1, 2, &[]), (2, 2, &[1]), (3, 1, &[2])]);
    start(&mut j);
    let event = run_on(&mut j, 1, &["e1", "e2"], 1);
    assert_eq!(event, Some(JobEvent::StageCompleted(1)));
    start(&mut j);
    run_on(&mut j, 2, &["e1", "e2"], 2);
    assert_eq!(start(&mut j), vec![3]);
    j.task_launched(3, 0, &"e2".into());

    // e1 dies: stage 2's map 0 on e1 is needed by the running stage 3, whose task is
    // cancelled to wait for it; rerunning it needs stage 1's map 0 on e1 too. What e2
    // holds is kept.
    assert_eq!(j.executor_lost(&"e1".into()), JobEvent::Recompute);
    let cancels = j.take_cancels();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].0.as_str(), "e2");
    let st = j.stage_statuses();
    for s in &st[..2] {
        assert_eq!(s.state, "waiting");
        assert_eq!(s.task_executors, vec!["".to_string(), "e2".to_string()]);
    }
    assert_eq!(st[2].state, "waiting");
    assert_eq!(start(&mut j), vec![1]);
    assert_eq!(
        finish_stage(&mut j, 1, "e2", 3),
        vec![JobEvent::StageCompleted(1)]
    );
    assert_eq!(start(&mut j), vec![2]);
    assert_eq!(
        finish_stage(&mut j, 2, "e2", 3),
        vec![JobEvent::StageCompleted(2)]
    );
    assert_eq!(start(&mut j), vec![3]);
    assert_eq!(finish_stage(&mut j, 3, "e2", 4), vec![JobEvent::Succeeded]);
    let launches: Vec<u32> = j.stage_statuses().iter().map(|s| s.launches).collect();
    assert_eq!(launches, vec![3, 3, 2], "only e1's outputs ran twice");
}

#[test]
fn outputs_no_unfinished_stage_reads_are_not_recomputed() {
    let mut j = job(&[(1, 1, &[]), (2, 1, &[1]), (3, 1, &[2])]);
    start(&mut j);
    finish_stage(&mut j, 1, "e1", 1);
    start(&mut j);
    finish_stage(&mut j, 2, "e2", 2);
    start(&mut j);
    j.task_launched(3, 0, &"e2".into());
    assert_eq!(j.executor_lost(&"e1".into()), JobEvent::None);
    assert_eq!(j.stage_statuses()[0].state, "completed");
    assert!(j.pending_tasks().is_empty());
}

#[test]
fn a_fetch_failure_recomputes_the_producer_and_retries_the_reader() {
    let mut j = job(&[(1, 2, &[]), (2, 1, &[1])]);
    start(&mut j);
    run_on(&mut j, 1, &["e1", "e2"], 1);
    start(&mut j);
    j.task_launched(2, 0, &"e2".into());
    let outcome = TaskOutcome::FetchFailed {
        executor_id: "e1".into(),
        stage_id: 1,
        message: "connection refused".into(),
    };
    let s = report(&j, 2, 0, "e2", outcome);
    assert_eq!(j.task_finished(&s, "a2", 2), Some(JobEvent::Recompute));
    let st = j.stage_statuses();
    assert_eq!(st[0].task_executors, vec!["".to_string(), "e2".to_string()]);
    assert_eq!(start(&mut j), vec![1]);
    finish_stage(&mut j, 1, "e2", 3);
    assert_eq!(start(&mut j), vec![2]);
    assert_eq!(finish_stage(&mut j, 2, "e2", 4), vec![JobEvent::Succeeded]);
}

#[test]
fn a_stage_without_tasks_completes_at_once() {
    let mut j = job(&[(1, 0, &[]), (2, 1, &[1])]);
    assert_eq!(start(&mut j), vec![2]);
    assert_eq!(j.output_locations(1).unwrap(), vec![Vec::new(), Vec::new()]);
    let mut empty = job(&[(1, 0, &[])]);
    assert!(start(&mut empty).is_empty());
    assert_eq!(empty.state, JobState::Succeeded);
}
