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
//! command does not know is an error naming it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

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

/// Option name → environment variable, for the options of the command at `path` (and the
/// global ones).
fn env_names(path: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut command = Cli::command();
    let collect = |command: &clap::Command, out: &mut BTreeMap<String, String>| {
        for arg in command.get_arguments() {
            if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
                out.insert(long.to_string(), env.to_string_lossy().to_string());
            }
        }
    };
    collect(&command, &mut out);
    for name in path {
        let Some(sub) = command.find_subcommand(name).cloned() else {
            break;
        };
        collect(&sub, &mut out);
        command = sub;
    }
    out
}

fn value_text(key: &str, value: &toml::Value) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| value_text(key, v))
            .collect::<Result<Vec<_>>>()?
            .join(","),
        other => bail!("setting {key}: {other} is not a value"),
    })
}

/// Reads the config file (if one is named) and sets the `EMBER_*` variables of the settings
/// it holds that neither the environment nor (then) the flags set.
pub fn apply(args: &[OsString]) -> Result<()> {
    let Some(path) = config_path(args) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let commands = command_path(args);
    let known = env_names(&commands);
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
    for (key, value, own) in settings {
        let Some(env) = known.get(&key) else {
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
        if std::env::var_os(env).is_none() {
            // SAFETY: called once at start-up, before any other thread exists.
            unsafe { std::env::set_var(env, value_text(&key, &value)?) };
        }
    }
    Ok(())
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
