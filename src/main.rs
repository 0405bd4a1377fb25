//! convmart binary: parse arguments, set up logging, call the library, map
//! the error to an exit code (SPEC §6).

use clap::Parser;
use convmart::cli::{Cli, Command, LogFormat};
use convmart::error::Result;
use std::io::IsTerminal;
use std::process::ExitCode;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONVMART_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,datafusion=warn,object_store=warn,ballista::extension=warn,ballista_core::execution_plans=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 for usage errors and 0 for --help/--version.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_logging(cli.log_format);
    // Deep plans (and Ballista's plan decoding in the scheduler) recurse far
    // beyond tokio's default 2 MiB worker stacks; this is address space only.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()
        .expect("tokio runtime");
    let outcome: Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => convmart::commands::run(args).await,
            Command::Validate(args) => convmart::commands::validate(args).await,
            Command::Generate(args) => convmart::commands::generate(args).await,
            Command::Scheduler(args) => convmart::commands::scheduler(args).await,
            Command::Executor(args) => convmart::commands::executor(args).await,
            Command::ScanFloor(args) => convmart::commands::scan_floor(args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(exit_code = e.exit_code(), "{e}");
            eprintln!("error: {e}");
            e.to_exit_code()
        }
    }
}
