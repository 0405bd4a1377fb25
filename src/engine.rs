//! The DataFusion session (embedded, or a Ballista client): configuration,
//! memory pool, the input table `events_in` (one listing table over the input
//! root that reads exactly the checked files), and stages kept as Parquet.

use crate::error::{Error, Result};
use crate::input::{InputSet, PARTITION_COLUMN};
use crate::storage::{Location, StoreRegistry};
use datafusion::arrow::array::UInt64Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::cache_manager::CachedFileList;
use datafusion::execution::cache::TableScopedPath;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{col, lit, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use std::num::NonZeroUsize;
use std::sync::Arc;

/// A fresh session. With a memory limit, operators that can spill do so
/// once their fair share of the pool is used. With a scheduler address the
/// queries run on that Ballista cluster (`--engine ballista`).
pub async fn session(
    memory_limit: Option<usize>,
    scheduler: Option<&str>,
) -> Result<SessionContext> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut config = SessionConfig::new()
        .with_target_partitions(cpus)
        .with_batch_size(8192)
        .with_information_schema(false)
        // Row filters run inside the Parquet decoder, so the columns of dropped
        // rows are never built and kept rows are not copied again by a separate
        // filter; about 4 s of 50 on the S benchmark.
        .set_bool("datafusion.execution.parquet.pushdown_filters", true);
    if let Some(limit) = memory_limit {
        // Every sort holds back a merge reservation (10 MiB by default) from
        // the pool; scale it to the limit so small limits still work. The
        // early joins stay hash joins (their build sides are small tables;
        // a sort-merge join would sort the 30-day input); job::build_stages
        // switches the attribution joins to sort-merge.
        let reservation = (limit / 128).clamp(256 << 10, 10 << 20) as u64;
        config = config.set_u64(
            "datafusion.execution.sort_spill_reservation_bytes",
            reservation,
        );
    }
    // The input's file list goes into the list-files cache (see
    // register_input); make room for large inputs.
    let mut runtime = RuntimeEnvBuilder::new()
        .with_object_list_cache_limit(256 << 20)
        .with_object_store_registry(Arc::new(StoreRegistry::default()));
    if let Some(limit) = memory_limit {
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(limit),
            NonZeroUsize::new(5).expect("non-zero"),
        );
        runtime = runtime.with_memory_pool(Arc::new(pool));
    }
    let runtime = runtime
        .build_arc()
        .map_err(|e| Error::internal("session", e))?;
    let ctx = match scheduler {
        None => SessionContext::new_with_config_rt(config, runtime),
        Some(url) => cluster_session(config, runtime, url).await?,
    };
    crate::functions::register(&ctx);
    Ok(ctx)
}

#[cfg(feature = "ballista")]
async fn cluster_session(
    config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    scheduler: &str,
) -> Result<SessionContext> {
    crate::cluster::client_session(config, runtime, scheduler).await
}

#[cfg(not(feature = "ballista"))]
async fn cluster_session(
    _config: SessionConfig,
    _runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    _scheduler: &str,
) -> Result<SessionContext> {
    Err(crate::error::Error::argument("--engine", NO_BALLISTA))
}

/// What a build without the `ballista` feature says when asked for Ballista.
pub const NO_BALLISTA: &str = "ballista: this convmart was built without Ballista support; \
     rebuild with `cargo build --release --features ballista`";

/// Registers `events_in`: one listing table over the input root with
/// `event_date` as its partition column, reading exactly the files that
/// `input::discover` checked: they are put into DataFusion's list-files cache
/// for this table, so DataFusion neither lists again nor sees other files. One
/// table (not one per day) lets DataFusion split the files into
/// `target_partitions` groups that are read one after the other, which keeps
/// the number of open Parquet readers, and so memory, small.
pub async fn register_input(
    ctx: &SessionContext,
    input_loc: &Location,
    input: &InputSet,
) -> Result<()> {
    input_loc.register(ctx);
    let fail = |e: datafusion::error::DataFusionError| Error::internal("input registration", e);
    let table_ref = TableReference::bare("events_raw");
    let root = ListingTableUrl::parse(format!(
        "{}/",
        input_loc.url_of(&input_loc.prefix).trim_end_matches('/')
    ))
    .map_err(fail)?
    .with_table_ref(table_ref.clone());
    let cache = ctx
        .runtime_env()
        .cache_manager
        .get_list_files_cache()
        .ok_or_else(|| Error::internal("input registration", "the list-files cache is disabled"))?;
    cache.put(
        &TableScopedPath {
            table: Some(table_ref.clone()),
            path: root.prefix().clone(),
        },
        CachedFileList::new(input.files.iter().map(|f| f.meta.clone()).collect()),
    );
    let table = parquet_table(
        ctx,
        root,
        input.schema.clone(),
        vec![(PARTITION_COLUMN.to_string(), DataType::Date32)],
    )
    .map_err(fail)?;
    ctx.register_table(table_ref, Arc::new(table))
        .map_err(fail)?;
    // The date range again, in case the cache entry were ever evicted.
    let dates = input.dates();
    let (first, last) = (dates.first().copied(), dates.last().copied());
    let (Some(first), Some(last)) = (first, last) else {
        return Err(Error::internal("input registration", "no input files"));
    };
    let events = ctx
        .table("events_raw")
        .await
        .map_err(fail)?
        .filter(col(PARTITION_COLUMN).between(lit(date32(first)), lit(date32(last))))
        .map_err(fail)?;
    ctx.register_table("events_in", events.into_view())
        .map_err(fail)?;
    Ok(())
}

fn date32(d: chrono::NaiveDate) -> ScalarValue {
    let days = (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32;
    ScalarValue::Date32(Some(days))
}

/// Writes `df` as Parquet files under the directory `url` (by the engine that
/// runs the query, so on Ballista by the executors) and registers them as
/// table `name`. Returns the number of rows.
pub async fn write_and_register(
    ctx: &SessionContext,
    name: &str,
    df: datafusion::prelude::DataFrame,
    url: &str,
) -> Result<u64> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    let counts = df
        .write_parquet(url, DataFrameWriteOptions::new(), None)
        .await
        .map_err(|e| crate::job::query_error(name, e))?;
    let rows = counts
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
        .flat_map(|a| a.iter().flatten())
        .sum();
    let fail = |e: datafusion::error::DataFusionError| Error::internal(name, e);
    let url = ListingTableUrl::parse(url).map_err(fail)?;
    let table = parquet_table(ctx, url, schema, vec![]).map_err(fail)?;
    ctx.register_table(name, Arc::new(table)).map_err(fail)?;
    Ok(rows)
}

/// The `*.parquet` files under `root` as a table with a given schema (no
/// footer-based inference), read with the session's Parquet options.
fn parquet_table(
    ctx: &SessionContext,
    root: ListingTableUrl,
    schema: datafusion::arrow::datatypes::SchemaRef,
    partition_cols: Vec<(String, DataType)>,
) -> datafusion::error::Result<ListingTable> {
    let format = ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partition_cols);
    let config = ListingTableConfig::new(root)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config)
}
