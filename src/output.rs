//! Output: Parquet writer settings, staging, the manifest commit and clean-up.
//!
//! Commit protocol for one report date D (SPEC §4 "Re-runs"):
//! 0. the run takes the date's lock (`crate::lock`);
//! 1. every table is written to `<output>/_staging/event_date=D/<run_id>/...` (invisible to readers);
//! 2. staged files are copied to `<output>/<table>/event_date=D/part-<run_id>-00000.parquet`
//!    (new names, so the previous run's files stay complete);
//! 3. the manifest `<output>/_runs/event_date=D.json` is written in one PUT: the commit point;
//! 4. files of partition D that the manifest does not list, and the staging files, are deleted.
//!
//! A failure before 3 leaves the previous manifest and its files intact; the
//! copies it may have left are unlisted and removed by the next successful run.

use crate::error::{Error, Result};
use crate::input::{partition_dir, InputFile};
use crate::storage::{store_error, Location};
use chrono::NaiveDate;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::DataFrame;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

pub const TABLES: [&str; 4] = [
    "campaign_daily",
    "dimension_summary",
    "conversions_by_name",
    "rejected_events",
];

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid zstd level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1_000_000))
        .set_created_by(format!("convmart {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One table's file of this run.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenFile {
    /// Final path relative to the output root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    #[serde(skip)]
    staged: Path,
    #[serde(skip)]
    target: Path,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableOutput {
    pub rows: u64,
    pub files: Vec<WrittenFile>,
}

/// The run manifest (SPEC §4); its presence means D is complete.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub job: &'static str,
    pub version: &'static str,
    pub run_id: String,
    pub event_date: String,
    pub rules_hash: String,
    pub rules_source: String,
    pub lookback_days: u32,
    pub attribution: &'static str,
    pub input: String,
    pub started_at: String,
    pub finished_at: String,
    pub input_files: Vec<InputFile>,
    pub rows_read: u64,
    pub bytes_read: u64,
    pub duplicates_dropped: u64,
    pub rejected_rows: BTreeMap<String, u64>,
    pub tables: BTreeMap<String, TableOutput>,
}

pub fn manifest_path(out: &Location, date: NaiveDate) -> Path {
    out.child(&format!("_runs/{}.json", partition_dir(date)))
}

fn staging_of_date(out: &Location, date: NaiveDate) -> Path {
    out.child(&format!("_staging/{}", partition_dir(date)))
}

fn staging_root(out: &Location, date: NaiveDate, run_id: &str) -> Path {
    staging_of_date(out, date).join(run_id)
}

/// Where a Ballista run keeps the stages it reads several times (removed with
/// the rest of the run's staging).
pub fn work_dir(out: &Location, date: NaiveDate, run_id: &str) -> Path {
    staging_root(out, date, run_id).join("_work")
}

/// Streams `df` into a staged Parquet file for `table`.
pub async fn stage_table(
    out: &Location,
    run_id: &str,
    table: &str,
    date: NaiveDate,
    df: DataFrame,
    schema: SchemaRef,
) -> Result<WrittenFile> {
    let rel = format!(
        "{table}/{}/part-{run_id}-00000.parquet",
        partition_dir(date)
    );
    let staged = staging_root(out, date, run_id)
        .join(table)
        .join(partition_dir(date))
        .join(format!("part-{run_id}-00000.parquet"));
    let target = out.child(&rel);
    let writer = BufWriter::new(out.store.clone(), staged.clone());
    let mut writer = AsyncArrowWriter::try_new(writer, schema.clone(), Some(writer_properties()))
        .map_err(|e| Error::internal(format!("writing {table}"), e))?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| crate::job::query_error(table, e))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| crate::job::query_error(table, e))?;
        // Field nullability may differ from the declared schema; the data is the same.
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            batch.columns().to_vec(),
        )
        .map_err(|e| Error::internal(format!("writing {table}"), e))?;
        rows += batch.num_rows() as u64;
        writer
            .write(&batch)
            .await
            .map_err(|e| write_error(out, &staged, e))?;
    }
    let meta = writer
        .close()
        .await
        .map_err(|e| write_error(out, &staged, e))?;
    let _ = meta;
    let bytes = out
        .store
        .head(&staged)
        .await
        .map_err(|e| store_error(out.describe(&staged), e))?
        .size;
    Ok(WrittenFile {
        path: rel,
        rows,
        bytes,
        staged,
        target,
    })
}

fn write_error(out: &Location, path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::storage(out.describe(path), e)
}

/// Publishes staged files and commits the manifest; then removes what the
/// manifest does not list. Returns the number of old files removed.
pub async fn publish(out: &Location, date: NaiveDate, manifest: &Manifest) -> Result<usize> {
    let files: Vec<&WrittenFile> = manifest
        .tables
        .values()
        .flat_map(|t| t.files.iter())
        .collect();
    futures::stream::iter(files.iter())
        .map(|f| async move {
            out.store
                .copy(&f.staged, &f.target)
                .await
                .map_err(|e| store_error(out.describe(&f.target), e))
        })
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await?;
    let body = serde_json::to_vec_pretty(manifest).map_err(|e| Error::internal("manifest", e))?;
    let path = manifest_path(out, date);
    out.store
        .put(&path, PutPayload::from(body))
        .await
        .map_err(|e| store_error(out.describe(&path), e))?;
    // Committed. From here on a failure only leaves garbage the next run removes.
    let keep: HashSet<&Path> = files.iter().map(|f| &f.target).collect();
    let mut removed = 0;
    for table in TABLES {
        let dir = out.child(&format!("{table}/{}", partition_dir(date)));
        let listed: Vec<_> = out
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| store_error(out.describe(&dir), e))?;
        for meta in listed {
            if !keep.contains(&meta.location) {
                delete_quietly(out.store.as_ref(), &meta.location).await;
                removed += 1;
            }
        }
    }
    // Under the date's lock, every staging run of D is this run's or a dead one's.
    remove_prefix(out, &staging_of_date(out, date)).await;
    Ok(removed)
}

/// Best-effort removal of a run's staging files (after a failure, or after commit).
pub async fn remove_prefix(out: &Location, prefix: &Path) {
    if let Ok(listed) = out.store.list(Some(prefix)).try_collect::<Vec<_>>().await {
        for meta in listed {
            delete_quietly(out.store.as_ref(), &meta.location).await;
        }
    }
    if out.is_local() {
        // Local directories are not removed by deleting their files.
        let dir = std::path::PathBuf::from(format!("/{}", prefix.as_ref()));
        let _ = std::fs::remove_dir_all(&dir);
        // Then `_staging/event_date=D` and `_staging` themselves, if now empty.
        for ancestor in dir.ancestors().skip(1).take(2) {
            let _ = std::fs::remove_dir(ancestor);
        }
    }
}

pub async fn remove_staging(out: &Location, date: NaiveDate, run_id: &str) {
    remove_prefix(out, &staging_root(out, date, run_id)).await
}

async fn delete_quietly(store: &dyn ObjectStore, path: &Path) {
    if let Err(e) = store.delete(path).await {
        tracing::warn!(path = %path, error = %e, "could not delete; the next run will retry");
    }
}
