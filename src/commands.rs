//! The three subcommands: turn parsed arguments into library calls and
//! print what a user wants to see on stdout (logs go to stderr).

use crate::cli::{
    Engine, ExecutorArgs, GenerateArgs, RunArgs, ScanFloorArgs, SchedulerArgs, ValidateArgs,
};
use crate::error::{Error, Result};
use crate::generate::{self, GenerateConfig};
use crate::input;
use crate::job::{self, JobConfig};
use crate::rules::Rules;
use crate::storage::Location;
use chrono::NaiveDate;

const DEMO_DIR: &str = "convmart-demo";
const DEMO_START: (i32, u32, u32) = (2026, 1, 1);
const DEMO_DAYS: u32 = 7;
const DEMO_EVENTS_PER_DAY: u64 = 5_000;

pub async fn run(args: RunArgs) -> Result<()> {
    let demo = args.input.is_none() && args.output.is_none();
    let (input, output, date) = if demo {
        demo_input().await?
    } else {
        let input = args
            .input
            .as_deref()
            .ok_or_else(|| Error::argument("--input", "is required with --output"))?;
        let output = args
            .output
            .as_deref()
            .ok_or_else(|| Error::argument("--output", "is required with --input"))?;
        let date = args.date.ok_or_else(|| {
            Error::argument("--date", "is required (the report date, YYYY-MM-DD)")
        })?;
        (
            Location::parse("input", input)?,
            Location::parse("output", output)?,
            date,
        )
    };
    let last_date = args.end_date.unwrap_or(date);
    if last_date < date {
        return Err(Error::argument(
            "--end-date",
            format!("{last_date} is before --date {date}"),
        ));
    }
    let scheduler = match (args.engine, args.scheduler) {
        (Engine::Datafusion, None) => None,
        (Engine::Datafusion, Some(s)) => {
            return Err(Error::argument(
                "--scheduler",
                format!("'{s}' is only used with --engine ballista; add --engine ballista or drop --scheduler"),
            ))
        }
        (Engine::Ballista, None) => {
            return Err(Error::argument(
                "--scheduler",
                "is required with --engine ballista (df://HOST:PORT of a `convmart scheduler`)",
            ))
        }
        (Engine::Ballista, Some(s)) => Some(s),
    };
    if scheduler.is_some() && !cfg!(feature = "ballista") {
        return Err(Error::argument("--engine", crate::engine::NO_BALLISTA));
    }
    let rules = Rules::load(args.rules.as_deref())?;
    let cfg = JobConfig {
        scheduler,
        input,
        output,
        first_date: date,
        last_date,
        rules,
        lookback_days: args.lookback_days,
        attribution: args.attribution,
        memory_limit: args.memory_limit,
        max_rejected_ratio: args.max_rejected_ratio,
    };
    let done = job::run(&cfg).await?;
    for d in &done {
        let m = &d.manifest;
        println!(
            "{} committed: run {} ({})",
            m.event_date, m.run_id, d.manifest_location
        );
        println!(
            "  read {} rows in {} files; {} duplicates dropped; {} rejected",
            m.rows_read,
            m.input_files.len(),
            m.duplicates_dropped,
            m.rejected_rows.values().sum::<u64>()
        );
        for (table, t) in &m.tables {
            println!("  {table:<20} {:>8} rows", t.rows);
        }
    }
    if demo {
        println!(
            "\nDemo tables are under {0}/output. Try:\n  duckdb -c \"SELECT utm_source, sum(hard_conversions) AS hard, sum(soft_conversions) AS soft \
             FROM read_parquet('{0}/output/campaign_daily/*/*.parquet', hive_partitioning = true) GROUP BY 1 ORDER BY 2 DESC\"",
            DEMO_DIR
        );
    }
    Ok(())
}

/// The embedded default: sample data on local disk, generated once.
async fn demo_input() -> Result<(Location, Location, NaiveDate)> {
    let start =
        NaiveDate::from_ymd_opt(DEMO_START.0, DEMO_START.1, DEMO_START.2).expect("valid date");
    let last = start + chrono::Days::new(DEMO_DAYS as u64 - 1);
    let input = Location::parse("input", &format!("{DEMO_DIR}/input"))?;
    let output = Location::parse("output", &format!("{DEMO_DIR}/output"))?;
    if input::list_files(&input, last, last).await?.is_empty() {
        println!("demo: generating {DEMO_DAYS} days x {DEMO_EVENTS_PER_DAY} events into {DEMO_DIR}/input");
        generate::generate(&GenerateConfig {
            output: input.clone(),
            start,
            days: DEMO_DAYS,
            events_per_day: DEMO_EVENTS_PER_DAY,
            seed: 42,
        })
        .await?;
    }
    println!("demo: running the job for {last} into {DEMO_DIR}/output");
    Ok((input, output, last))
}

pub async fn validate(args: ValidateArgs) -> Result<()> {
    let rules = Rules::load(args.rules.as_deref())?;
    let schema_source = match (args.input.as_deref(), args.date) {
        (Some(input), Some(date)) => {
            let loc = Location::parse("input", input)?;
            let first = date - chrono::Days::new(args.lookback_days as u64);
            let found = input::discover(&loc, first, date).await?;
            if found.files.is_empty() {
                return Err(Error::NoInput {
                    date: date.to_string(),
                    message: format!("no .parquet file in {} for {first}..{date}", loc.display),
                });
            }
            rules.check_against(&found.schema)?;
            format!(
                "the schema of {} files in {}",
                found.files.len(),
                loc.display
            )
        }
        _ => {
            rules.check_against(&input::spec_schema())?;
            "the SPEC input columns (pass --input and --date to check other columns)".to_string()
        }
    };
    let hard = rules
        .rules
        .iter()
        .filter(|r| r.kind == crate::rules::Kind::Hard)
        .count();
    println!(
        "{}: {} rules ({hard} hard, {} soft) are valid against {schema_source}",
        rules.source,
        rules.rules.len(),
        rules.rules.len() - hard
    );
    for r in &rules.rules {
        println!("  {:<24} {}  when {}", r.name, r.kind.as_str(), r.when_sql);
    }
    Ok(())
}

pub async fn generate(args: GenerateArgs) -> Result<()> {
    let cfg = GenerateConfig {
        output: Location::parse("output", &args.output)?,
        start: args.start_date,
        days: args.days,
        events_per_day: args.events_per_day,
        seed: args.seed,
    };
    let rows = generate::generate(&cfg).await?;
    println!(
        "wrote {rows} rows in {} partitions to {}",
        args.days, cfg.output.display
    );
    Ok(())
}

/// Reads every column the job needs and forces it to be decoded (a sum of
/// lengths cannot be answered from Parquet statistics), nothing else.
pub async fn scan_floor(args: ScanFloorArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let loc = Location::parse("input", &args.input)?;
    let first = args.date - chrono::Days::new(args.lookback_days as u64);
    let found = input::discover(&loc, first, args.date).await?;
    let ctx = crate::engine::session(args.memory_limit, None).await?;
    crate::engine::register_input(&ctx, &loc, &found).await?;
    let batches = ctx
        .sql(crate::queries::SCAN_FLOOR)
        .await
        .map_err(|e| crate::job::query_error("scan floor", e))?
        .collect()
        .await
        .map_err(|e| crate::job::query_error("scan floor", e))?;
    let rows = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0);
    println!(
        "scan-floor rows={rows} files={} seconds={:.3}",
        found.files.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `convmart scheduler`: a Ballista scheduler with convmart's object stores.
pub async fn scheduler(args: SchedulerArgs) -> Result<()> {
    #[cfg(feature = "ballista")]
    return crate::cluster::run_scheduler(args).await;
    #[cfg(not(feature = "ballista"))]
    {
        let _ = args;
        Err(Error::argument("scheduler", crate::engine::NO_BALLISTA))
    }
}

/// `convmart executor`: a Ballista executor with convmart's object stores.
pub async fn executor(args: ExecutorArgs) -> Result<()> {
    #[cfg(feature = "ballista")]
    return crate::cluster::run_executor(args).await;
    #[cfg(not(feature = "ballista"))]
    {
        let _ = args;
        Err(Error::argument("executor", crate::engine::NO_BALLISTA))
    }
}
