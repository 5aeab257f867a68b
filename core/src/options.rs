//! Options several commands share, declared once (flag, `EMBER_*` variable, default and doc)
//! and flattened into each command that takes them; and the built-in defaults of a command's
//! options, read without the environment.

use clap::{Args, Parser};

/// How a scheduler or executor finds its cluster's coordination: etcd and the cluster's name.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ClusterConnection {
    /// etcd endpoints (`http://host:port`, comma-separated). With them, schedulers elect a
    /// leader and keep jobs there, executors register there under a lease, and clients find
    /// the leader there; without them a scheduler keeps its state in memory.
    #[arg(long, env = "EMBER_ETCD")]
    pub etcd: Option<String>,

    /// Name of the cluster: its keys live under `/ember/NAME` in etcd.
    #[arg(long, env = "EMBER_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,

    /// TLS for the ports a process serves and the peers it dials.
    #[command(flatten)]
    pub tls: crate::tls::TlsOptions,
}

/// How a client or an executor reaches a cluster: its schedulers' URLs, or etcd (which names
/// the leader).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ClusterAddress {
    /// Scheduler(s), as http://HOST:PORT; several, comma-separated, are tried in turn (a
    /// standby forwards to the leader).
    #[arg(
        long = "scheduler",
        env = "EMBER_SCHEDULER_URL",
        conflicts_with = "etcd"
    )]
    pub scheduler: Option<String>,

    #[command(flatten)]
    pub connection: ClusterConnection,

    /// The token this process calls the cluster's schedulers with.
    #[command(flatten)]
    pub token: crate::auth::TokenOptions,
}

/// A command's options as its declarations default them: no `EMBER_*` variable and no config
/// file is read (those are resolved once, when the command line is parsed).
pub fn built_in_defaults<T: Parser>() -> T {
    let command = T::command().mut_args(|arg| arg.env(None::<&'static str>));
    let name = command.get_name().to_string();
    let matches = command
        .try_get_matches_from([name])
        .expect("every option has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults parse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "probe")]
    struct Probe {
        #[command(flatten)]
        cluster: ClusterAddress,
    }

    #[test]
    fn defaults_ignore_the_environment_and_the_block_parses_once_for_every_command() {
        // A variable set by someone else's test or shell must not leak into defaults.
        let defaults: Probe = built_in_defaults();
        assert_eq!(defaults.cluster.connection.cluster_name, "default");
        assert_eq!(defaults.cluster.scheduler, None);
        let parsed =
            Probe::try_parse_from(["probe", "--etcd", "http://e:2379", "--cluster-name", "prod"])
                .unwrap();
        assert_eq!(
            parsed.cluster.connection.etcd.as_deref(),
            Some("http://e:2379")
        );
        assert_eq!(parsed.cluster.connection.cluster_name, "prod");
        let both = Probe::try_parse_from(["probe", "--etcd", "http://e:2379", "--scheduler", "x"]);
        assert!(both.is_err(), "--scheduler and --etcd conflict");
    }
}
