//! `--config FILE` (or `EMBER_CONFIG`): settings from a TOML file, under the command line and
//! the environment.
//!
//! Keys are the long option names of the command (`bind = "0.0.0.0:50050"`, `etcd = "..."`,
//! `slots = 4`, `s3-endpoint = "..."`). Top-level keys apply to every command that has the
//! option; a table named after a command applies to it alone, so that one file (a Kubernetes
//! ConfigMap, say) can configure every role:
//!
//! ```toml
//! etcd = "http://etcd:2379"
//! log-format = "json"
//!
//! [scheduler]
//! bind = "0.0.0.0:50050"
//!
//! [executor]
//! slots = 4
//! ```
//!
//! Precedence: flags, then `EMBER_*` variables, then the file, then the defaults. A key the
//! command does not know is an error naming it. The file's values become the options'
//! defaults when the command line is parsed: one resolve step, and no process environment is
//! changed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The config file the arguments or the environment name, if any.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("EMBER_CONFIG").map(PathBuf::from)
}

/// The names of the (sub)commands `args` invoke, outermost first, e.g. `["jobs", "list"]`.
fn command_path(args: &[OsString]) -> Vec<String> {
    let mut command = Cli::command();
    let mut path = Vec::new();
    for arg in args.iter().skip(1) {
        let arg = arg.to_string_lossy();
        if arg.starts_with('-') {
            continue;
        }
        let Some(sub) = command.find_subcommand(arg.as_ref()).cloned() else {
            continue;
        };
        path.push(arg.to_string());
        command = sub;
    }
    path
}

/// The options the command at `path` takes from a file (those with an `EMBER_*` variable):
/// long name → (the path of the command that declares it, its id). The root's options count
/// too; a subcommand's own wins over its parent's.
fn owners(path: &[String]) -> BTreeMap<String, (Vec<String>, String)> {
    let mut out = BTreeMap::new();
    let mut command = Cli::command();
    let collect =
        |command: &Command, at: &[String], out: &mut BTreeMap<String, (Vec<String>, String)>| {
            for arg in command.get_arguments() {
                if let (Some(long), Some(_)) = (arg.get_long(), arg.get_env()) {
                    let owner = (at.to_vec(), arg.get_id().to_string());
                    out.insert(long.to_string(), owner);
                }
            }
        };
    collect(&command, &[], &mut out);
    for (depth, name) in path.iter().enumerate() {
        let Some(sub) = command.find_subcommand(name).cloned() else {
            break;
        };
        collect(&sub, &path[..=depth], &mut out);
        command = sub;
    }
    out
}

/// `command` with the option `id` of the subcommand at `path` defaulting to `values`.
fn with_default(command: Command, path: &[String], id: &str, values: Vec<&'static str>) -> Command {
    match path.split_first() {
        None => command.mut_arg(id, |arg| arg.default_values(values)),
        Some((name, rest)) => {
            let name = name.clone();
            command.mut_subcommand(name, |sub| with_default(sub, rest, id, values))
        }
    }
}

/// A setting's value(s) as command-line text: an array gives one value per item.
fn value_texts(key: &str, value: &toml::Value) -> Result<Vec<String>> {
    Ok(match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(value_texts(key, item)?);
            }
            out
        }
        other => bail!("setting {key}: {other} is not a value"),
    })
}

/// Parses the command line (`args`, the program name first). A config file named by
/// `--config` or `EMBER_CONFIG` supplies defaults for the options flags and variables leave
/// unset. Help, version and usage errors exit as clap does.
pub fn parse(args: Vec<OsString>) -> Result<Cli> {
    let matches = command_with_file(&args)?.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Like [`parse`], but a usage error comes back as an error instead of ending the process.
pub fn try_parse(args: Vec<OsString>) -> Result<Cli> {
    let matches = command_with_file(&args)?.try_get_matches_from(args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The command line's definition, with the config file's values as the defaults.
fn command_with_file(args: &[OsString]) -> Result<Command> {
    let mut command = Cli::command();
    for setting in file_settings(args)? {
        // Read once at start-up and kept for the process's life.
        let values: Vec<&'static str> = setting
            .values
            .into_iter()
            .map(|v| &*Box::leak(v.into_boxed_str()))
            .collect();
        command = with_default(command, &setting.command, &setting.id, values);
    }
    Ok(command)
}

/// One setting of the config file, for the option that takes it.
struct FileSetting {
    /// The path of the (sub)command that declares the option.
    command: Vec<String>,
    id: String,
    values: Vec<String>,
}

/// The settings of the config file (if one is named) that the command `args` invoke takes.
fn file_settings(args: &[OsString]) -> Result<Vec<FileSetting>> {
    let Some(path) = config_path(args) else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let commands = command_path(args);
    let known = owners(&commands);
    let command_name = commands.join(" ");
    // (key, value, whether it sits in the command's own table)
    let mut settings: Vec<(String, toml::Value, bool)> = Vec::new();
    let all_commands: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for (key, value) in table {
        match value {
            toml::Value::Table(section) => {
                if !all_commands.contains(&key) {
                    bail!("{}: no command is named [{key}]", path.display());
                }
                if commands.first() == Some(&key) {
                    settings.extend(section.into_iter().map(|(k, v)| (k, v, true)));
                }
            }
            value => settings.push((key, value, false)),
        }
    }
    let mut out = Vec::new();
    for (key, value, own) in settings {
        let Some((owner, id)) = known.get(&key) else {
            // Top-level keys may belong to other commands; a key no command knows, or one in
            // this command's table that it does not take from a file, is a mistake.
            if !own && env_names_anywhere().contains(&key) {
                continue;
            }
            bail!(
                "{}: unknown setting {key:?} for `ember {command_name}` (see its --help; \
                 options without an EMBER_* variable are not read from the file)",
                path.display()
            );
        };
        out.push(FileSetting {
            command: owner.clone(),
            id: id.clone(),
            values: value_texts(&key, &value)?,
        });
    }
    Ok(out)
}

/// Every option name of every command.
fn env_names_anywhere() -> Vec<String> {
    fn walk(command: &clap::Command, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                out.push(long.to_string());
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command as Sub;

    fn scheduler(args: &[&str], file: &str) -> ember_scheduler::SchedulerConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ember.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["ember".into(), "scheduler".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.extend(["--config".into(), path.into_os_string()]);
        match parse(argv).unwrap().command {
            Sub::Scheduler(config) => config,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_file_fills_in_what_flags_leave_unset_and_flags_win() {
        let file = "cluster-name = \"prod\"\n[scheduler]\nbind = \"127.0.0.1:7000\"\nmax-task-attempts = 7\n";
        let from_file = scheduler(&[], file);
        assert_eq!(from_file.bind, "127.0.0.1:7000");
        assert_eq!(from_file.max_task_attempts, 7);
        assert_eq!(from_file.cluster.cluster_name, "prod");
        let flagged = scheduler(&["--bind", "127.0.0.1:7001"], file);
        assert_eq!(flagged.bind, "127.0.0.1:7001");
        assert_eq!(flagged.max_task_attempts, 7);
    }
}
