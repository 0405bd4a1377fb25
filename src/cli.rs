//! Command-line interface: `run`, `validate`, `generate`. Every flag has its
//! help text here; parsing errors name the flag and the bad value.

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes:
  0   success: tables and manifest written
  2   bad arguments or rules (the message names the argument or rule)
  3   no input partition for the report date; nothing written
  65  data error: corrupt Parquet, required column missing, wrong column type,
      or --max-rejected-ratio exceeded; the message names the file; nothing written
  70  internal error (a bug; please report it)
  75  storage unreachable or another temporary fault; safe to retry";

#[derive(Debug, Parser)]
#[command(
    name = "convmart",
    version,
    about = "Hard and soft conversion summaries from raw ad-event Parquet, on DataFusion",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Log format on stderr: human-readable text, or one JSON object per line for schedulers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the job for one report date (or a range). With neither --input nor
    /// --output, runs a demo on generated sample data under ./convmart-demo.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Check a rule file, and optionally that its columns exist in the input.
    #[command(after_help = EXIT_CODES)]
    Validate(ValidateArgs),
    /// Write deterministic sample raw events (Hive-partitioned Parquet).
    #[command(after_help = EXIT_CODES)]
    Generate(GenerateArgs),
    /// Start a Ballista scheduler for `run --engine ballista` (needs a build
    /// with `--features ballista`). Runs until killed.
    Scheduler(SchedulerArgs),
    /// Start a Ballista executor that registers with a scheduler; it reads and
    /// writes S3 with this process's AWS_* variables (needs `--features ballista`).
    Executor(ExecutorArgs),
    /// Benchmark floor: only read and decode the input columns `run` needs
    /// for D-L..D, with the same session settings. Prints rows and seconds.
    #[command(hide = true)]
    ScanFloor(ScanFloorArgs),
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,

    /// gRPC port that clients (`run --scheduler`) and executors connect to.
    #[arg(long, default_value_t = 50050)]
    pub port: u16,

    /// Host name other machines use to reach this scheduler. Default: --bind-host.
    #[arg(long)]
    pub external_host: Option<String>,

    /// Seconds without a heartbeat after which an executor counts as lost and
    /// its tasks are scheduled elsewhere.
    #[arg(long, default_value_t = 30)]
    pub executor_timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler to register with: df://HOST:PORT.
    #[arg(long, env = "CONVMART_SCHEDULER")]
    pub scheduler: String,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,

    /// Host name the scheduler and other executors use to reach this one. Default: --bind-host.
    #[arg(long)]
    pub external_host: Option<String>,

    /// Arrow Flight port (shuffle data is fetched from here).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,

    /// gRPC port for the scheduler's task calls.
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,

    /// Tasks run at once. Default: the number of cores.
    #[arg(long)]
    pub concurrent_tasks: Option<usize>,

    /// Directory for shuffle files. Default: a new directory under the system temp dir.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// Memory for all of this executor's tasks together, e.g. 4GiB (split evenly
    /// between the concurrent tasks; operators spill beyond it). Default: no limit.
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<usize>,

    /// Seconds between heartbeats to the scheduler (keep it well below the
    /// scheduler's --executor-timeout-secs).
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
}

/// Where the queries run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// In this process (DataFusion).
    Datafusion,
    /// On an Apache Ballista cluster given by --scheduler (needs `--features ballista`).
    Ballista,
}

#[derive(Debug, Args)]
pub struct ScanFloorArgs {
    #[arg(long)]
    pub input: String,
    #[arg(long, value_parser = parse_date)]
    pub date: NaiveDate,
    #[arg(long, default_value_t = 30)]
    pub lookback_days: u32,
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// Events without campaign parameters take them from the user's latest touch in the lookback.
    #[value(name = "last_touch")]
    LastTouch,
    /// Only the event's own campaign parameters count; no touch means direct.
    Event,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::LastTouch => "last_touch",
            Attribution::Event => "event",
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Raw events root: s3://bucket/prefix, file:///abs/path or a local path.
    /// Holds event_date=YYYY-MM-DD/*.parquet.
    #[arg(long)]
    pub input: Option<String>,

    /// Output root (s3://, file:// or local path). Tables go to <output>/<table>/event_date=D/.
    #[arg(long)]
    pub output: Option<String>,

    /// Report date D (YYYY-MM-DD). Required with --input.
    #[arg(long, value_parser = parse_date)]
    pub date: Option<NaiveDate>,

    /// Last report date of a range D..=END (each date is computed as if run alone).
    #[arg(long, value_parser = parse_date)]
    pub end_date: Option<NaiveDate>,

    /// Rule file (TOML). Default: the rules shipped with convmart (SPEC §2).
    #[arg(long)]
    pub rules: Option<PathBuf>,

    /// Lookback L in days: partitions D-L..D are read, touches and soft
    /// conversions count within L days before an event.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=3660))]
    pub lookback_days: u32,

    /// Attribution model.
    #[arg(long, value_enum, default_value_t = Attribution::LastTouch)]
    pub attribution: Attribution,

    /// Memory limit for query execution, e.g. 512MiB, 2GiB, 1G (operators spill to disk beyond it).
    /// Default: no limit.
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<usize>,

    /// Fail with exit 65, writing nothing, when rejected rows of D exceed this
    /// fraction (0..1) of the rows of D. Default: no limit.
    #[arg(long, value_parser = parse_ratio)]
    pub max_rejected_ratio: Option<f64>,

    /// Query engine: embedded DataFusion, or a Ballista cluster (with --scheduler).
    /// Output, manifest and re-run replacement are the same for both.
    #[arg(long, value_enum, default_value_t = Engine::Datafusion)]
    pub engine: Engine,

    /// Ballista scheduler for --engine ballista: df://HOST:PORT.
    #[arg(long)]
    pub scheduler: Option<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Rule file (TOML). Default: the shipped rules.
    #[arg(long)]
    pub rules: Option<PathBuf>,

    /// Check the rules against the schema of this input (with --date).
    #[arg(long, requires = "date")]
    pub input: Option<String>,

    /// Report date whose partitions (with --lookback-days) give the input schema.
    #[arg(long, value_parser = parse_date, requires = "input")]
    pub date: Option<NaiveDate>,

    /// Lookback in days used to find the partitions read (as for `run`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=3660))]
    pub lookback_days: u32,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where to write: s3://, file:// or a local path.
    #[arg(long)]
    pub output: String,

    /// First date to generate (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub start_date: NaiveDate,

    /// Number of consecutive days.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub days: u32,

    /// Events per day (before duplicates are added).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub events_per_day: u64,

    /// Random seed; the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("'{s}' is not a date of the form YYYY-MM-DD ({e})"))
}

/// Sizes like `512MiB`, `2GiB`, `1G`, `1500000` (bytes).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 512MiB, 2GiB or 1G"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}' (use KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = n * mult;
    if bytes < 16.0 * 1024.0 * 1024.0 {
        return Err(format!("'{s}' is too small; convmart needs at least 16MiB"));
    }
    Ok(bytes as usize)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("'{s}' is not a ratio between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("12xb")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("1k").unwrap_err().contains("too small"));
    }

    #[test]
    fn dates_must_be_iso() {
        assert!(parse_date("2024-02-30").is_err());
        assert_eq!(
            parse_date("2024-02-29").unwrap(),
            NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
        );
    }
}
