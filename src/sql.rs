//! `ember sql`: runs statements on an embedded or remote cluster and prints their results; with
//! no `-c`/`-f`, an interactive shell with history.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use ember_client::{EmbeddedCluster, EmberClient, QueryResult};

use crate::cli::{ClusterArgs, OutputFormat, ProgressMode, SqlArgs};

/// A connection to a cluster, and the embedded cluster when this process runs one.
pub struct Session {
    pub client: EmberClient,
    embedded: Option<EmbeddedCluster>,
}

impl Session {
    pub async fn open(args: &ClusterArgs) -> Result<Self> {
        let (client, embedded) = match EmberClient::connect_to(&args.remote).await? {
            Some(client) => (client, None),
            None => {
                let cluster = EmbeddedCluster::start(args.executors, args.slots).await?;
                (cluster.client().await?, Some(cluster))
            }
        };
        let session = Session { client, embedded };
        if let Some(dir) = &args.tables {
            for ddl in table_ddl(dir)? {
                session
                    .client
                    .sql(&ddl)
                    .await
                    .with_context(|| ddl.clone())?;
            }
        }
        Ok(session)
    }

    pub async fn close(self) {
        if let Some(cluster) = self.embedded {
            cluster.shutdown().await;
        }
    }
}

pub async fn run(args: SqlArgs) -> Result<()> {
    let script = match (&args.command, &args.file) {
        (Some(sql), _) => Some(sql.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, None) => None,
    };
    let session = Session::open(&args.cluster).await?;
    let result = match script {
        Some(script) => {
            run_script(
                &session.client,
                &script,
                args.format,
                args.timing,
                args.progress,
            )
            .await
        }
        None => shell(&session.client, args.format, args.timing, args.progress).await,
    };
    session.close().await;
    result
}

async fn run_script(
    client: &EmberClient,
    script: &str,
    format: OutputFormat,
    timing: bool,
    progress: ProgressMode,
) -> Result<()> {
    let statements = split_statements(script);
    if statements.is_empty() {
        bail!("no SQL statement given");
    }
    for sql in statements {
        run_one(client, &sql, format, timing, progress).await?;
    }
    Ok(())
}

async fn run_one(
    client: &EmberClient,
    sql: &str,
    format: OutputFormat,
    timing: bool,
    progress: ProgressMode,
) -> Result<()> {
    let start = Instant::now();
    let job = client.submit(sql).await?;
    let progress = crate::jobs::Progress::new(progress);
    let status = client
        .wait(&job, |status| {
            progress.show(
                status.stages_completed,
                status.stages_total,
                format!("tasks {}/{}", status.tasks_completed, status.tasks_total),
            );
        })
        .await;
    progress.finish();
    let result = client.collect(status?).await?;
    print_result(&result, format)?;
    if timing {
        eprintln!(
            "{} row(s) in {:.3}s",
            result.num_rows(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn shell(
    client: &EmberClient,
    format: OutputFormat,
    timing: bool,
    progress: ProgressMode,
) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| Path::new(&h).join(".ember_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    eprintln!("Ember SQL shell. End statements with ';', quit with \\q.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "ember> "
        } else {
            "   ..> "
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !ends_statement(&buffer) {
            continue;
        }
        let _ = editor.add_history_entry(buffer.trim());
        for sql in split_statements(&buffer) {
            if let Err(e) = run_one(client, &sql, format, timing, progress).await {
                eprintln!("error: {e:#}");
            }
        }
        buffer.clear();
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// Prints a result in the chosen format to stdout.
pub fn print_result(result: &QueryResult, format: OutputFormat) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write_batches(&mut out, &result.schema, &result.batches, format)?;
    out.flush()?;
    Ok(())
}

fn write_batches(
    out: &mut dyn Write,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    format: OutputFormat,
) -> Result<()> {
    if schema.fields().is_empty() {
        // DDL and other statements without a result.
        return Ok(());
    }
    match format {
        OutputFormat::Table => {
            let batches = if batches.is_empty() {
                vec![RecordBatch::new_empty(schema.clone())]
            } else {
                batches.to_vec()
            };
            writeln!(out, "{}", pretty_format_batches(&batches)?)?;
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// `CREATE EXTERNAL TABLE IF NOT EXISTS` statements for each sub-folder or data file of `dir` (a
/// cluster shared by several sessions may have them already).
pub fn table_ddl(dir: &Path) -> Result<Vec<String>> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("--tables {}", dir.display()))?;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    let mut ddl = Vec::new();
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let (table, format, location) = if path.is_dir() {
            let Some(format) = folder_format(&path)? else {
                continue;
            };
            (name, format, format!("{}/", path.display()))
        } else {
            let Some(format) = file_format(&path) else {
                continue;
            };
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or(name);
            (stem, format, path.display().to_string())
        };
        let options = if format == "CSV" {
            " OPTIONS ('format.has_header' 'true')"
        } else {
            ""
        };
        ddl.push(format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS \"{}\" STORED AS {format} LOCATION '{}'{options}",
            table.replace('"', "\"\""),
            location.replace('\'', "''"),
        ));
    }
    Ok(ddl)
}

fn file_format(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "parquet" => Some("PARQUET"),
        "csv" => Some("CSV"),
        "json" | "ndjson" => Some("JSON"),
        _ => None,
    }
}

fn folder_format(dir: &Path) -> Result<Option<&'static str>> {
    let mut formats: Vec<&'static str> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| file_format(&e.path()))
        .collect();
    formats.sort_unstable();
    formats.dedup();
    match formats.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => bail!("{} mixes file formats {many:?}", dir.display()),
    }
}

/// Splits a script into statements at `;` outside quotes and comments; blank ones are dropped.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    current.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            current.push('\n');
                            break;
                        }
                    }
                }
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    let mut prev = ' ';
                    for c in chars.by_ref() {
                        if prev == '*' && c == '/' {
                            break;
                        }
                        prev = c;
                    }
                    current.push(' ');
                }
                ';' => {
                    if !current.trim().is_empty() {
                        out.push(current.trim().to_string());
                    }
                    current.clear();
                }
                _ => current.push(c),
            },
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// Whether the shell buffer ends with a complete statement (a `;` outside quotes).
fn ends_statement(buffer: &str) -> bool {
    let trimmed = buffer.trim_end();
    if !trimmed.ends_with(';') {
        return false;
    }
    // The last `;` ends a statement only if no quote is left open before it.
    let mut quote: Option<char> = None;
    for c in trimmed.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None => {}
        }
    }
    quote.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let cases: &[(&str, &[&str])] = &[
            ("select 1; select 2;", &["select 1", "select 2"]),
            (
                "select ';' as x; select 2",
                &["select ';' as x", "select 2"],
            ),
            ("-- a comment; still comment\nselect 1;", &["select 1"]),
            ("select /* ; */ 1;;  ;", &["select   1"]),
            ("select \"a;b\" from t", &["select \"a;b\" from t"]),
            ("  ;  ", &[]),
        ];
        for (script, expected) in cases {
            assert_eq!(split_statements(script), *expected, "{script}");
        }
    }

    #[test]
    fn shell_waits_for_a_closing_semicolon() {
        assert!(!ends_statement("select 1"));
        assert!(!ends_statement("select ';"));
        assert!(ends_statement("select ';';\n"));
    }
}
