//! One run of the job: for each report date, the stages in order
//! (discover input, check rules, register, compute, stage, commit).

use crate::cli::Attribution;
use crate::engine;
use crate::error::{one_line, Error, Result};
use crate::input::{self, InputSet};
use crate::lock::DateLock;
use crate::output::{self, Manifest, TableOutput};
use crate::queries::{self, fill};
use crate::rules::Rules;
use crate::storage::Location;
use chrono::{NaiveDate, Utc};
use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::error::DataFusionError;
use datafusion::prelude::{lit, DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// Everything one invocation of `convmart run` needs.
pub struct JobConfig {
    pub input: Location,
    pub output: Location,
    pub first_date: NaiveDate,
    pub last_date: NaiveDate,
    pub rules: Rules,
    pub lookback_days: u32,
    pub attribution: Attribution,
    pub memory_limit: Option<usize>,
    pub max_rejected_ratio: Option<f64>,
    /// `Some(df://host:port)`: run the queries on that Ballista cluster.
    pub scheduler: Option<String>,
}

/// What a finished date reports back (also printed by the CLI).
pub struct DateSummary {
    pub manifest: Manifest,
    pub manifest_location: String,
}

pub async fn run(cfg: &JobConfig) -> Result<Vec<DateSummary>> {
    let mut done = Vec::new();
    for date in cfg
        .first_date
        .iter_days()
        .take_while(|d| *d <= cfg.last_date)
    {
        done.push(run_date(cfg, date).await?);
    }
    Ok(done)
}

fn new_run_id(started: chrono::DateTime<Utc>) -> String {
    // Unique enough across machines: time to the second, plus pid and nanos.
    let nanos = started.timestamp_subsec_nanos() as u64;
    let salt = (nanos ^ ((std::process::id() as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{}-{:08x}", started.format("%Y%m%dT%H%M%SZ"), salt >> 32)
}

fn date_param(d: NaiveDate) -> ScalarValue {
    let days = (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32;
    ScalarValue::Date32(Some(days))
}

/// Maps a query failure: data problems met while reading (exit 65), storage
/// (exit 75), anything else internal.
pub fn query_error(stage: &str, e: DataFusionError) -> Error {
    let e = e.strip_backtrace();
    let text = one_line(&e);
    let lower = text.to_lowercase();
    if lower.contains("resources exhausted") {
        // Not every operator can spill (hash-join build sides cannot, in DataFusion 55).
        return Error::argument(
            "--memory-limit",
            format!("{stage} needs more memory than the limit allows; raise --memory-limit or leave it unset ({text})"),
        );
    }
    if lower.contains("object store")
        || lower.contains("objectstore")
        || lower.contains("connection")
        || lower.contains("error sending request")
    {
        Error::storage(format!("stage {stage}"), text)
    } else if lower.contains("parquet") || lower.contains("cast") || lower.contains("arrow error") {
        Error::DataLimit(format!("while computing {stage}: {text}"))
    } else if lower.contains("transport error")
        || (lower.contains("job ") && lower.contains(" failed:"))
    {
        // A Ballista job that failed for a cluster reason (lost executors, an
        // unreachable scheduler): nothing was committed, so a retry is safe.
        Error::storage(format!("Ballista cluster, stage {stage}"), text)
    } else {
        Error::internal(stage, text)
    }
}

async fn sql(
    ctx: &SessionContext,
    stage: &str,
    text: &str,
    params: Vec<ScalarValue>,
) -> Result<DataFrame> {
    let df = ctx.sql(text).await.map_err(|e| query_error(stage, e))?;
    if params.is_empty() {
        Ok(df)
    } else {
        df.with_param_values(params)
            .map_err(|e| query_error(stage, e))
    }
}

async fn view(
    ctx: &SessionContext,
    name: &str,
    text: &str,
    params: Vec<ScalarValue>,
) -> Result<()> {
    let df = sql(ctx, name, text, params).await?;
    ctx.register_table(name, df.into_view())
        .map_err(|e| Error::internal(name, e))?;
    Ok(())
}

/// Where stages that are read several times are kept: in memory; as Parquet
/// under this run's staging directory (Ballista, which cannot cache); or as
/// Parquet in a local temp dir (`--memory-limit`, since the pool cannot see
/// cached tables).
enum Materialize<'a> {
    InMemory,
    Staged {
        out: &'a Location,
        dir: object_store::path::Path,
    },
}

/// Registers every stage; the ones read several times (duplicate_ids, candidates,
/// relevant_events, attributed_events) are computed once and kept (`keep`).
/// Returns the manifest's duplicates_dropped.
async fn build_stages(
    ctx: &SessionContext,
    cfg: &JobConfig,
    date: NaiveDate,
    keep: &Materialize<'_>,
) -> Result<u64> {
    let lookback_us = ScalarValue::Int64(Some(cfg.lookback_days as i64 * 86_400 * 1_000_000));
    view(ctx, "checked_events", queries::CHECKED_EVENTS, vec![]).await?;
    let valid = fill(
        queries::VALID_EVENTS,
        &[
            ("RULE_INDEX", &cfg.rules.rule_index_sql()),
            ("RULE_VALUE", &cfg.rules.rule_value_sql("rule_index")),
            ("RULE_NAME", &cfg.rules.rule_name_sql("rule_index")),
            ("RULE_KIND", &cfg.rules.rule_kind_sql("rule_index")),
        ],
    );
    view(ctx, "valid_events", &valid, vec![]).await?;
    materialize(ctx, keep, "duplicate_ids", queries::DUPLICATE_IDS, vec![]).await?;
    materialize(
        ctx,
        keep,
        "candidates",
        queries::CANDIDATES,
        vec![date_param(date)],
    )
    .await?;
    // Kept too: last_touch and assisted read it several times each.
    materialize(
        ctx,
        keep,
        "relevant_events",
        queries::RELEVANT_EVENTS,
        vec![],
    )
    .await?;
    let duplicates_dropped = first_count(ctx, "input_stats", queries::INPUT_STATS).await?;
    // Nothing reads candidates any more; let its rows go.
    ctx.deregister_table("candidates")
        .map_err(|e| Error::internal("candidates", e))?;
    view(
        ctx,
        "report_events",
        queries::REPORT_EVENTS,
        vec![date_param(date)],
    )
    .await?;
    if cfg.memory_limit.is_some() {
        // From here on the joins are between big tables (events of D, their
        // touches); their hash-join build sides could not spill, so a
        // bounded run uses sort-merge joins, which can. (Earlier stages join
        // big inputs to small tables, where hash joins are the lean choice.)
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .optimizer
            .prefer_hash_join = false;
    }
    let last_touch = sql(
        ctx,
        "last_touch",
        queries::LAST_TOUCH,
        vec![lookback_us.clone()],
    )
    .await?;
    let last_touch = match cfg.attribution {
        Attribution::LastTouch => last_touch,
        // Same columns, no rows: every non-touch event is direct.
        Attribution::Event => last_touch
            .filter(lit(false))
            .map_err(|e| Error::internal("last_touch", e))?,
    };
    ctx.register_table("last_touch", last_touch.into_view())
        .map_err(|e| Error::internal("last_touch", e))?;
    view(ctx, "assisted", queries::ASSISTED, vec![lookback_us]).await?;
    materialize(
        ctx,
        keep,
        "attributed_events",
        queries::ATTRIBUTED_EVENTS,
        vec![],
    )
    .await?;
    Ok(duplicates_dropped)
}

/// The first column of the first row of a one-row query (0 if it has none).
async fn first_count(ctx: &SessionContext, stage: &str, text: &str) -> Result<u64> {
    let batches = sql(ctx, stage, text, vec![])
        .await?
        .collect()
        .await
        .map_err(|e| query_error(stage, e))?;
    let value = batches.first().and_then(|b| {
        b.column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.value(0))
    });
    Ok(value.unwrap_or(0) as u64)
}

/// Computes a stage once and keeps its rows (as `keep` says) for the stages
/// that read it several times (DataFusion would otherwise recompute a view per use).
async fn materialize(
    ctx: &SessionContext,
    keep: &Materialize<'_>,
    name: &str,
    text: &str,
    params: Vec<ScalarValue>,
) -> Result<()> {
    let started = Instant::now();
    if std::env::var_os("CONVMART_EXPLAIN").is_some() {
        explain(ctx, name, text, params.clone()).await?;
    }
    let df = sql(ctx, name, text, params).await?;
    let rows = match keep {
        Materialize::InMemory => {
            let df = df.cache().await.map_err(|e| query_error(name, e))?;
            let rows = df.clone().count().await.map_err(|e| query_error(name, e))? as u64;
            ctx.register_table(name, df.into_view())
                .map_err(|e| Error::internal(name, e))?;
            rows
        }
        Materialize::Staged { out, dir } => {
            let url = format!("{}/", out.url_of(&dir.clone().join(name)));
            engine::write_and_register(ctx, name, df, &url).await?
        }
    };
    info!(
        stage = name,
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "stage computed"
    );
    Ok(())
}

/// Profiling aid (`CONVMART_EXPLAIN=1`): prints the executed plan with metrics to stderr.
async fn explain(
    ctx: &SessionContext,
    stage: &str,
    text: &str,
    params: Vec<ScalarValue>,
) -> Result<()> {
    let batches = sql(ctx, stage, &format!("EXPLAIN ANALYZE {text}"), params)
        .await?
        .collect()
        .await
        .map_err(|e| query_error(stage, e))?;
    let shown = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .map_err(|e| Error::internal(stage, e))?;
    eprintln!("{shown}");
    Ok(())
}

fn table_query(table: &str) -> String {
    // Fragments are spliced without their header comments.
    let body = |fragment: &str| {
        fragment
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (metrics, rollup) = (body(queries::SUMMARY_METRICS), body(queries::USER_ROLLUP));
    let fragments = [
        ("METRICS", metrics.as_str()),
        ("USER_ROLLUP", rollup.as_str()),
    ];
    match table {
        "campaign_daily" => fill(queries::CAMPAIGN_DAILY, &fragments),
        "dimension_summary" => fill(queries::DIMENSION_SUMMARY, &fragments),
        "conversions_by_name" => queries::CONVERSIONS_BY_NAME.to_string(),
        "rejected_events" => queries::REJECTED_EVENTS.to_string(),
        other => unreachable!("unknown table {other}"),
    }
}

async fn run_date(cfg: &JobConfig, date: NaiveDate) -> Result<DateSummary> {
    let started_at = Utc::now();
    let run_id = new_run_id(started_at);
    let first = date - chrono::Days::new(cfg.lookback_days as u64);
    info!(stage = "start", date = %date, run_id = %run_id, input = %cfg.input.display, output = %cfg.output.display, "run started");

    let t = Instant::now();
    let input: InputSet = input::discover(&cfg.input, first, date).await?;
    if !input.has_date(date) {
        return Err(Error::NoInput {
            date: date.to_string(),
            message: format!(
                "no .parquet file under {}; nothing was written",
                cfg.input
                    .describe(&cfg.input.child(&input::partition_dir(date)))
            ),
        });
    }
    info!(
        stage = "discover",
        files = input.files.len(),
        rows = input.rows(),
        bytes = input.bytes(),
        partitions = input.dates().len(),
        elapsed_ms = t.elapsed().as_millis() as u64,
        "input found and checked"
    );
    cfg.rules.check_against(&input.schema)?;

    let ctx = engine::session(cfg.memory_limit, cfg.scheduler.as_deref()).await?;
    cfg.output.register(&ctx);
    engine::register_input(&ctx, &cfg.input, &input).await?;

    let files = input.files.clone();
    let lock = DateLock::acquire(&cfg.output, date, &run_id).await?;
    // Under a memory limit, stages read several times go to local Parquet
    // files (removed when `spill` drops) instead of memory the pool cannot see.
    let spill = match (&cfg.scheduler, cfg.memory_limit) {
        (None, Some(_)) => Some(spill_location()?),
        _ => None,
    };
    let keep = match (&cfg.scheduler, &spill) {
        (Some(_), _) => Materialize::Staged {
            out: &cfg.output,
            dir: output::work_dir(&cfg.output, date, &run_id),
        },
        (None, Some((_dir, loc))) => Materialize::Staged {
            out: loc,
            dir: loc.prefix.clone(),
        },
        (None, None) => Materialize::InMemory,
    };
    let result = async {
        let duplicates_dropped = build_stages(&ctx, cfg, date, &keep).await?;
        let run = RunFacts {
            date,
            run_id: &run_id,
            started_at,
            duplicates_dropped,
        };
        stage_and_commit(&ctx, cfg, &run, input, &lock).await
    }
    .await;
    if result.is_err() {
        output::remove_staging(&cfg.output, date, &run_id).await;
    }
    lock.release().await;
    match result {
        // A footer can be fine while a data page is not; name the file.
        Err(Error::DataLimit(message)) if message.starts_with("while computing") => {
            match input::find_unreadable(&cfg.input, &files).await {
                Some((file, why)) => Err(Error::data(file, why)),
                None => Err(Error::DataLimit(message)),
            }
        }
        other => other,
    }
}

/// A fresh directory under the system temp dir (`TMPDIR`) for the stages a
/// memory-limited run keeps on disk.
fn spill_location() -> Result<(tempfile::TempDir, Location)> {
    let dir = tempfile::Builder::new()
        .prefix("convmart-stages-")
        .tempdir()
        .map_err(|e| Error::argument("--memory-limit", format!("cannot create a directory for intermediate stages under {} ({e}); set TMPDIR to a writable disk", std::env::temp_dir().display())))?;
    let loc = Location::parse("TMPDIR", &dir.path().display().to_string())?;
    Ok((dir, loc))
}

/// What one date's run knows before its tables are written.
struct RunFacts<'a> {
    date: NaiveDate,
    run_id: &'a str,
    started_at: chrono::DateTime<Utc>,
    duplicates_dropped: u64,
}

async fn stage_and_commit(
    ctx: &SessionContext,
    cfg: &JobConfig,
    run: &RunFacts<'_>,
    input: InputSet,
    lock: &DateLock,
) -> Result<DateSummary> {
    let RunFacts {
        date,
        run_id,
        started_at,
        duplicates_dropped,
    } = *run;
    let mut tables = BTreeMap::new();
    let mut rejected_rows = BTreeMap::new();
    for table in output::TABLES {
        let t = Instant::now();
        let params = if table == "rejected_events" {
            vec![date_param(date)]
        } else {
            vec![]
        };
        let df = sql(ctx, table, &table_query(table), params).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let written = output::stage_table(&cfg.output, run_id, table, date, df, schema).await?;
        info!(
            stage = "write",
            table,
            rows = written.rows,
            bytes = written.bytes,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "table staged"
        );
        tables.insert(
            table.to_string(),
            TableOutput {
                rows: written.rows,
                files: vec![written],
            },
        );
    }
    for reason in [
        "missing_event_id",
        "missing_event_type",
        "missing_event_time",
    ] {
        rejected_rows.insert(reason.to_string(), 0u64);
    }
    let counts = sql(ctx, "rejected counts",
        "SELECT reject_reason, count(*) AS n FROM checked_events WHERE event_date = $1 AND reject_reason IS NOT NULL GROUP BY reject_reason",
        vec![date_param(date)]).await?.collect().await.map_err(|e| query_error("rejected counts", e))?;
    for batch in &counts {
        let reasons = batch.column(0).as_any().downcast_ref::<StringArray>();
        let ns = batch.column(1).as_any().downcast_ref::<Int64Array>();
        if let (Some(reasons), Some(ns)) = (reasons, ns) {
            for i in 0..batch.num_rows() {
                rejected_rows.insert(reasons.value(i).to_string(), ns.value(i) as u64);
            }
        }
    }
    let rows_of_d: u64 = input
        .files
        .iter()
        .filter(|f| f.date == date)
        .map(|f| f.rows)
        .sum();
    let rejected_total: u64 = rejected_rows.values().sum();
    if let Some(max) = cfg.max_rejected_ratio {
        let ratio = if rows_of_d == 0 {
            0.0
        } else {
            rejected_total as f64 / rows_of_d as f64
        };
        if ratio > max {
            return Err(Error::DataLimit(format!(
                "{rejected_total} of {rows_of_d} rows of {date} are rejected ({:.4}), more than --max-rejected-ratio {max}; nothing was written",
                ratio
            )));
        }
    }
    let manifest = Manifest {
        job: "convmart",
        version: env!("CARGO_PKG_VERSION"),
        run_id: run_id.to_string(),
        event_date: date.to_string(),
        rules_hash: cfg.rules.hash.clone(),
        rules_source: cfg.rules.source.clone(),
        lookback_days: cfg.lookback_days,
        attribution: cfg.attribution.as_str(),
        input: cfg.input.display.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        rows_read: input.rows(),
        bytes_read: input.bytes(),
        input_files: input.files,
        duplicates_dropped,
        rejected_rows,
        tables,
    };
    lock.confirm().await?;
    let removed = output::publish(&cfg.output, date, &manifest).await?;
    let manifest_location = cfg
        .output
        .describe(&output::manifest_path(&cfg.output, date));
    info!(stage = "commit", date = %date, run_id = %run_id, manifest = %manifest_location, replaced_files = removed, "date committed");
    Ok(DateSummary {
        manifest,
        manifest_location,
    })
}
