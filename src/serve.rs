//! Long-running processes: `ember scheduler`, `ember executor`, `ember standalone`. Each stops
//! cleanly on SIGINT/SIGTERM.

use anyhow::Result;
use ember_client::EmbeddedCluster;
use ember_executor::ExecutorConfig;
use ember_scheduler::SchedulerConfig;

use crate::cli::{LogFormat, StandaloneArgs};

/// Tells the operator what a server does (where it listens, how it stops): a plain line on
/// stderr, or a log event when logs are JSON lines (so that every line stays JSON).
fn announce(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => tracing::info!("{message}"),
    }
}

async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn scheduler(config: SchedulerConfig, format: LogFormat) -> Result<()> {
    let advertised = config.advertise_addr.clone();
    let handle = ember_scheduler::start(config).await?;
    let message = match advertised {
        Some(a) => format!(
            "ember scheduler listening on {} (dial {a})",
            handle.local_addr
        ),
        None => format!("ember scheduler listening on {}", handle.local_addr),
    };
    announce(format, &message);
    terminated().await;
    handle.shutdown().await?;
    Ok(())
}

pub async fn executor(config: ExecutorConfig, format: LogFormat) -> Result<()> {
    let handle = ember_executor::start(config).await?;
    announce(
        format,
        &format!(
            "ember executor {} listening on {}",
            handle.executor_id, handle.local_addr
        ),
    );
    tokio::select! {
        _ = terminated() => {}
        _ = handle.stopped() => {
            handle.shutdown().await;
            anyhow::bail!("the executor stopped: the scheduler refused it (see the log)");
        }
    }
    // SIGTERM drains: no new tasks, running ones finish, held shuffle output stays served
    // until its jobs are done. A second signal stops at once.
    tokio::select! {
        _ = handle.drain() => {}
        _ = terminated() => announce(format, "ember executor: stopping without draining"),
    }
    Ok(())
}

pub async fn standalone(args: StandaloneArgs, format: LogFormat) -> Result<()> {
    let scheduler = SchedulerConfig {
        http_bind: args.http_bind.clone(),
        spark_connect_bind: args.spark_connect_bind.clone(),
        confinement: args.confinement.clone(),
        auth: args.auth.clone(),
        ..SchedulerConfig::default()
    };
    let cluster =
        EmbeddedCluster::start_with(scheduler, args.executors, args.slots, &args.bind).await?;
    if let Some(path) = &args.port_file {
        std::fs::write(path, cluster.scheduler_port().to_string())?;
    }
    announce(
        format,
        &format!(
            "ember standalone: scheduler on port {} with {} executors",
            cluster.scheduler_port(),
            cluster.executors().len()
        ),
    );
    terminated().await;
    cluster.shutdown().await;
    Ok(())
}
