//! The DataFusion session: configuration, memory pool, and the input table
//! `events_in` (the union of one listing table per partition, each with its
//! date as a literal `event_date`, so exactly the listed files are read).

use crate::error::{Error, Result};
use crate::input::{InputSet, PARTITION_COLUMN};
use crate::storage::Location;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{lit, DataFrame, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use std::num::NonZeroUsize;
use std::sync::Arc;

/// A fresh session. With a memory limit, operators that can spill do so
/// once their fair share of the pool is used.
pub fn session(memory_limit: Option<usize>) -> Result<SessionContext> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let config = SessionConfig::new()
        .with_target_partitions(cpus)
        .with_batch_size(8192)
        .with_information_schema(false);
    let mut runtime = RuntimeEnvBuilder::new();
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
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Registers `events_in`: every input file with the merged schema, plus `event_date`.
pub async fn register_input(
    ctx: &SessionContext,
    input_loc: &Location,
    input: &InputSet,
) -> Result<()> {
    input_loc.register(ctx);
    let format = ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let mut union: Option<DataFrame> = None;
    for date in input.dates() {
        let urls = input
            .files
            .iter()
            .filter(|f| f.date == date)
            .map(|f| {
                ListingTableUrl::parse(&f.url).map_err(|e| Error::internal("input registration", e))
            })
            .collect::<Result<Vec<_>>>()?;
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options.clone())
            .with_schema(input.schema.clone());
        let table =
            ListingTable::try_new(config).map_err(|e| Error::internal("input registration", e))?;
        let days =
            (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32;
        let df = ctx
            .read_table(Arc::new(table))
            .and_then(|df| df.with_column(PARTITION_COLUMN, lit(ScalarValue::Date32(Some(days)))))
            .map_err(|e| Error::internal("input registration", e))?;
        union = Some(match union {
            None => df,
            Some(u) => u
                .union(df)
                .map_err(|e| Error::internal("input registration", e))?,
        });
    }
    let union = union.ok_or_else(|| Error::internal("input registration", "no input files"))?;
    ctx.register_table("events_in", union.into_view())
        .map_err(|e| Error::internal("input registration", e))?;
    Ok(())
}
