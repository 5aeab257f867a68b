//! `ember submit` and `ember jobs`: batch jobs, the way an orchestrator runs them — submit a
//! script, get an id, follow or cancel it later from anywhere.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ember_client::{EmberClient, ScriptStatus};
use ember_core::job::JobState;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{JobsAction, JobsArgs, ProgressMode, RemoteArgs, SubmitArgs};
use crate::sql::split_statements;

pub async fn connect(remote: &RemoteArgs) -> Result<EmberClient> {
    EmberClient::connect_to(&remote.cluster)
        .await?
        .context("give the cluster with --scheduler URL or --etcd URLS")
}

pub async fn submit(args: SubmitArgs) -> Result<()> {
    let script = match (&args.command, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => bail!("give the script with -f FILE or -c SQL"),
    };
    let statements = split_statements(&script);
    if statements.is_empty() {
        bail!("the script holds no SQL statement");
    }
    let client = connect(&args.remote).await?;
    let name = args.name.clone().unwrap_or_default();
    let weight = args.weight.to_string();
    let settings = [(
        ember_scheduler::runtime::JOB_WEIGHT_SETTING,
        weight.as_str(),
    )];
    let id = client.submit_script(&name, statements, &settings).await?;
    println!("{id}");
    if !args.wait {
        return Ok(());
    }
    let progress = Progress::new(args.progress);
    let result = client
        .wait_script(&id, |status| {
            progress.show(
                status.stages_completed,
                status.stages_total,
                format!(
                    "statement {}/{}, tasks {}/{}",
                    (status.statements_done + 1).min(status.statements_total),
                    status.statements_total,
                    status.tasks_completed,
                    status.tasks_total
                ),
            );
        })
        .await;
    progress.finish();
    let status = match result {
        Ok(status) => status,
        Err(e) => {
            if let Ok(Some(status)) = client.scripts(Some(&id)).await.map(|mut s| s.pop()) {
                eprint!("{}", describe(&status));
            }
            // The error keeps its kind: the exit code tells a user error from a retryable one.
            return Err(anyhow::Error::from(e).context(format!("job {id} did not succeed")));
        }
    };
    eprint!("{}", describe(&status));
    Ok(())
}

pub async fn jobs(args: JobsArgs) -> Result<()> {
    let client = connect(&args.remote).await?;
    match args.action {
        JobsAction::List => {
            // Batch jobs, and ad-hoc queries named by their SQL.
            let scripts = client.scripts(None).await?;
            println!(
                "{:<32} {:<32} {:<10} {:>10} {:>11} {:>9}",
                "ID", "NAME", "STATE", "STATEMENTS", "STAGES", "ELAPSED"
            );
            for s in scripts {
                println!(
                    "{:<32} {:<32} {:<10} {:>10} {:>11} {:>9}",
                    s.script_id,
                    shorten(&s.name, 32),
                    state_name(s.state),
                    format!("{}/{}", s.statements_done, s.statements_total),
                    format!("{}/{}", s.stages_completed, s.stages_total),
                    seconds(s.elapsed_ms)
                );
            }
        }
        JobsAction::Status { id } => {
            let status = client
                .scripts(Some(&id))
                .await?
                .pop()
                .with_context(|| format!("no job {id}"))?;
            print!("{}", describe(&status));
            if status.state == JobState::Failed {
                let failure = ember_core::EmberError::TaskFailed {
                    message: status.error.clone().unwrap_or_default(),
                    kind: status
                        .error_kind
                        .unwrap_or(ember_core::error::ErrorKind::Internal),
                };
                return Err(anyhow::Error::from(failure).context(format!("job {id} failed")));
            }
        }
        JobsAction::Cancel { id } => {
            if client.cancel(&id.clone().into()).await? {
                println!("cancelled {id}");
            } else {
                println!("{id} had already finished");
            }
        }
    }
    Ok(())
}

/// How a waiting command shows a job's progress: stages done of all, and a message (tasks).
pub enum Progress {
    Bar(ProgressBar),
    /// The last line printed.
    Plain(std::sync::Mutex<String>),
    Off,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::new(1).with_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] stages {bar:30} {pos}/{len} {msg}",
                    )
                    .expect("a valid template"),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                Progress::Bar(bar)
            }
            ProgressMode::Auto | ProgressMode::Off => Progress::Off,
            ProgressMode::Plain => Progress::Plain(Default::default()),
        }
    }

    pub fn show(&self, done: u32, total: u32, message: String) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(total.max(1) as u64);
                bar.set_position(done as u64);
                bar.set_message(message);
            }
            Progress::Plain(last) => {
                let line = format!("stages {done}/{total}, {message}");
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != line {
                    eprintln!("{line}");
                    *last = line;
                }
            }
            Progress::Off => {}
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn state_name(state: JobState) -> &'static str {
    state.name()
}

/// `text` cut to `width` characters, with an ellipsis when cut.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Milliseconds as seconds to the millisecond: short jobs do not all show as "0.0s".
fn seconds(ms: u64) -> String {
    format!("{:.3}s", ms as f64 / 1000.0)
}

/// A job's status as `ember jobs status` prints it.
pub fn describe(s: &ScriptStatus) -> String {
    let mut out = format!(
        "job:        {}\nname:       {}\nstate:      {}\nstatements: {}/{} done\nstages:     {}/{}\ntasks:      {}/{}\nelapsed:    {}\n",
        s.script_id,
        s.name,
        state_name(s.state),
        s.statements_done,
        s.statements_total,
        s.stages_completed,
        s.stages_total,
        s.tasks_completed,
        s.tasks_total,
        seconds(s.elapsed_ms)
    );
    if !s.statement_rows.is_empty() {
        let rows: Vec<String> = s.statement_rows.iter().map(u64::to_string).collect();
        out.push_str(&format!("rows:       {}\n", rows.join(", ")));
    }
    let r = &s.resources;
    if r.compute_ns > 0 || r.rows_scanned > 0 {
        use ember_core::task_metrics::{format_bytes, format_nanos};
        out.push_str(&format!(
            "used:       cpu {}, peak task memory {}, scanned {} rows ({}), shuffled {}, spilled {}\n",
            format_nanos(r.compute_ns),
            format_bytes(r.peak_task_memory_bytes),
            r.rows_scanned,
            format_bytes(r.bytes_scanned),
            format_bytes(r.shuffle_bytes),
            format_bytes(r.spilled_bytes),
        ));
    }
    if let Some(error) = &s.error {
        let kind = s.error_kind.map(|k| format!(" ({k})")).unwrap_or_default();
        out.push_str(&format!("error:      {error}{kind}\n"));
    }
    out
}
