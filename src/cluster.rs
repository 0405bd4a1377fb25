//! Apache Ballista: the client session for `run --engine ballista`, and the
//! `scheduler` / `executor` processes. Both processes resolve `s3://` and
//! local paths with `storage::StoreRegistry`, i.e. from their own `AWS_*`
//! variables, so a cluster reaches the same buckets as the client when it is
//! started with the same environment.

use crate::cli::{ExecutorArgs, SchedulerArgs};
use crate::error::{Error, Result};
use crate::storage::StoreRegistry;
use ballista::prelude::SessionContextExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// `df://host:port` (or `http://`, or bare `host:port`) -> (host, port).
pub fn parse_scheduler(arg: &str, value: &str) -> Result<(String, u16)> {
    let rest = value
        .strip_prefix("df://")
        .or_else(|| value.strip_prefix("http://"))
        .unwrap_or(value)
        .trim_end_matches('/');
    let bad = || {
        Error::argument(
            arg,
            format!("'{value}' is not a scheduler address like df://127.0.0.1:50050"),
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// A session whose queries run on the Ballista cluster behind `scheduler`.
/// The scheduler is checked first, so a wrong address fails fast (exit 75).
pub async fn client_session(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    scheduler: &str,
) -> Result<SessionContext> {
    let (host, port) = parse_scheduler("--scheduler", scheduler)?;
    let addr = format!("{host}:{port}");
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(Error::storage(
                format!("Ballista scheduler {scheduler}"),
                format!("cannot connect: {e}; is `convmart scheduler` running there?"),
            ))
        }
        Err(_) => {
            return Err(Error::storage(
                format!("Ballista scheduler {scheduler}"),
                "no answer within 10 s",
            ))
        }
    }
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::remote_with_state(&format!("df://{addr}"), state)
        .await
        .map_err(|e| Error::internal("ballista session", e))?;
    // Ballista 55's adaptive planner (on by default) loops forever, scheduling
    // thousands of empty stages, on convmart's attribution query; the static
    // distributed planner runs it correctly.
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .set("ballista.planner.adaptive.enabled", "false")
        .map_err(|e| Error::internal("ballista session", e))?;
    Ok(ctx)
}

fn runtime_with_stores(work_dir: Option<String>) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let mut builder =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(StoreRegistry::default()));
    if let Some(dir) = work_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// Runs a scheduler until the process is killed.
pub async fn run_scheduler(args: SchedulerArgs) -> Result<()> {
    let addr = format!("{}:{}", args.bind_host, args.port);
    let socket = addr
        .parse()
        .map_err(|e| Error::argument("--bind-host/--port", format!("'{addr}': {e}")))?;
    let mut config = SchedulerConfig {
        bind_host: args.bind_host.clone(),
        bind_port: args.port,
        external_host: args.external_host.unwrap_or(args.bind_host),
        executor_timeout_seconds: args.executor_timeout_secs,
        expire_dead_executor_interval_seconds: 5,
        no_executors_grace_period_seconds: args.executor_timeout_secs,
        ..Default::default()
    };
    // The scheduler plans scans, so it lists input files itself.
    config = config.with_override_session_builder(Arc::new(|config: SessionConfig| {
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime_with_stores(None)?)
            .with_default_features()
            .build();
        for f in crate::functions::all() {
            state.register_udf(f)?;
        }
        Ok(state)
    }));
    let fail = |e: ballista_core::error::BallistaError| {
        Error::storage(format!("scheduler on {addr}"), e.to_string())
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(fail)?;
    info!(address = %addr, "Ballista scheduler listening");
    start_server(cluster, socket, Arc::new(config))
        .await
        .map_err(fail)
}

/// Runs an executor until the process is killed.
pub async fn run_executor(args: ExecutorArgs) -> Result<()> {
    let (scheduler_host, scheduler_port) = parse_scheduler("--scheduler", &args.scheduler)?;
    let work_dir = args.work_dir.map(|p| p.display().to_string());
    let producer_dir = work_dir.clone();
    let config = ExecutorProcessConfig {
        bind_host: args.bind_host.clone(),
        external_host: Some(args.external_host.unwrap_or(args.bind_host)),
        port: args.port,
        grpc_port: args.grpc_port,
        scheduler_host,
        scheduler_port,
        // Wait for a scheduler that starts after us instead of exiting at once.
        scheduler_connect_timeout_seconds: 60,
        vcores: args.concurrent_tasks.unwrap_or(0),
        work_dir,
        memory_pool_size: args.memory_limit.map(|b| b as u64),
        executor_heartbeat_interval_seconds: args.heartbeat_secs,
        print_thread_info: false,
        override_runtime_producer: Some(Arc::new(move |_config: &SessionConfig| {
            runtime_with_stores(producer_dir.clone())
        })),
        override_function_registry: Some(Arc::new(function_registry())),
        ..Default::default()
    };
    let addr = format!("{}:{}", config.bind_host, config.port);
    info!(flight = %addr, scheduler = %args.scheduler, "Ballista executor starting");
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::storage(format!("executor on {addr}"), e.to_string()))
}

/// DataFusion's functions plus convmart's, for decoding task plans.
fn function_registry() -> BallistaFunctionRegistry {
    let mut registry = BallistaFunctionRegistry::default();
    for f in crate::functions::all() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_addresses_parse() {
        assert_eq!(
            parse_scheduler("--scheduler", "df://127.0.0.1:50050").unwrap(),
            ("127.0.0.1".to_string(), 50050)
        );
        assert_eq!(
            parse_scheduler("--scheduler", "sched:7").unwrap(),
            ("sched".to_string(), 7)
        );
        let e = parse_scheduler("--scheduler", "df://host")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--scheduler") && e.contains("df://host"), "{e}");
    }
}
