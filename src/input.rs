//! Raw-event input: finds the Parquet files of partitions D-L..D, checks each
//! file's footer (valid Parquet, required columns, usable types) and merges
//! the files' schemas into one explicit table schema. Reading with an
//! explicit schema is what lets files of one partition differ in timestamp
//! unit, time zone and numeric type (DataFusion casts per file).

use crate::error::{Error, Result};
use crate::storage::{store_error, Location};
use chrono::NaiveDate;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
// ParquetObjectReader is deprecated in favour of hand-written AsyncFileReaders;
// it is still the simplest correct footer reader for object_store 0.13.
#[allow(deprecated)]
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Columns SPEC §1 names, in SPEC order, with the type convmart reads them as.
pub const REQUIRED: [&str; 3] = ["event_id", "event_time", "event_type"];
const SPEC_ORDER: [&str; 13] = [
    "event_id",
    "event_time",
    "event_type",
    "user_id",
    "anonymous_id",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "device_type",
    "country",
    "revenue",
];

/// The partition column; it lives in paths only.
pub const PARTITION_COLUMN: &str = "event_date";

pub fn event_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn spec_type(name: &str) -> DataType {
    match name {
        "event_time" => event_time_type(),
        "revenue" => DataType::Float64,
        _ => DataType::Utf8,
    }
}

/// The SPEC columns with their canonical types (all nullable).
pub fn spec_schema() -> Schema {
    Schema::new(
        SPEC_ORDER
            .iter()
            .map(|n| Field::new(*n, spec_type(n), true))
            .collect::<Vec<_>>(),
    )
}

/// One input file and what its footer says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputFile {
    #[serde(skip)]
    pub path: Path,
    /// Full URL (or absolute local path) for the manifest and messages.
    #[serde(rename = "path")]
    pub display: String,
    #[serde(skip)]
    pub date: NaiveDate,
    /// The listing entry, handed to DataFusion so it reads exactly these files.
    #[serde(skip)]
    pub meta: object_store::ObjectMeta,
    pub size: u64,
    pub rows: u64,
}

/// The files of the partitions read, and their merged schema.
#[derive(Debug, Clone)]
pub struct InputSet {
    pub files: Vec<InputFile>,
    /// Columns of the files (SPEC columns first), without the partition column.
    pub schema: SchemaRef,
}

impl InputSet {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
    pub fn has_date(&self, date: NaiveDate) -> bool {
        self.files.iter().any(|f| f.date == date)
    }
    pub fn dates(&self) -> Vec<NaiveDate> {
        let mut d: Vec<_> = self.files.iter().map(|f| f.date).collect();
        d.dedup();
        d
    }
}

pub fn partition_dir(date: NaiveDate) -> String {
    format!("{PARTITION_COLUMN}={}", date.format("%Y-%m-%d"))
}

/// The partition dates present under the root within `first..=last`: one
/// delimiter listing of the root instead of one request per day of lookback.
async fn partitions_in_range(
    loc: &Location,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<Vec<NaiveDate>> {
    let listing = loc
        .store
        .list_with_delimiter(Some(&loc.prefix))
        .await
        .map_err(|e| store_error(loc.describe(&loc.prefix), e))?;
    let prefix = format!("{PARTITION_COLUMN}=");
    let mut dates: Vec<NaiveDate> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .filter_map(|name| name.strip_prefix(prefix.as_str()))
        .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .filter(|d| *d >= first && *d <= last)
        .collect();
    dates.sort();
    dates.dedup();
    Ok(dates)
}

/// Lists the `.parquet` files of every date in `first..=last` (ignoring
/// `_`/`.`-prefixed names such as `_SUCCESS`), ordered by date then name.
pub async fn list_files(
    loc: &Location,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<Vec<(NaiveDate, object_store::ObjectMeta)>> {
    let dates = partitions_in_range(loc, first, last).await?;
    let listed: Vec<Vec<(NaiveDate, object_store::ObjectMeta)>> = futures::stream::iter(dates)
        .map(|date| async move {
            let dir = loc.child(&partition_dir(date));
            let listing = loc
                .store
                .list_with_delimiter(Some(&dir))
                .await
                .map_err(|e| store_error(loc.describe(&dir), e))?;
            let mut files: Vec<_> = listing
                .objects
                .into_iter()
                .filter(|m| {
                    let name = m.location.filename().unwrap_or("");
                    name.ends_with(".parquet") && !name.starts_with('_') && !name.starts_with('.')
                })
                .map(|m| (date, m))
                .collect();
            files.sort_by(|a, b| a.1.location.cmp(&b.1.location));
            Ok::<_, Error>(files)
        })
        .buffered(8)
        .try_collect()
        .await?;
    Ok(listed.into_iter().flatten().collect())
}

/// Lists and checks the input of `first..=last`.
pub async fn discover(loc: &Location, first: NaiveDate, last: NaiveDate) -> Result<InputSet> {
    let listed = list_files(loc, first, last).await?;
    let checked: Vec<(InputFile, SchemaRef)> = futures::stream::iter(listed)
        .map(|(date, meta)| read_footer(loc, date, meta))
        .buffered(16)
        .try_collect()
        .await?;
    let schema = merge_schemas(&checked)?;
    Ok(InputSet {
        files: checked.into_iter().map(|(f, _)| f).collect(),
        schema: Arc::new(schema),
    })
}

async fn read_footer(
    loc: &Location,
    date: NaiveDate,
    meta: object_store::ObjectMeta,
) -> Result<(InputFile, SchemaRef)> {
    let display = loc.describe(&meta.location);
    if meta.size == 0 {
        return Err(Error::data(
            display,
            "the file is empty (0 bytes), not Parquet",
        ));
    }
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(loc.store.clone(), meta.location.clone())
        .with_file_size(meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| parquet_error(&display, e))?;
    let schema = builder.schema().clone();
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    check_file_schema(&display, &schema)?;
    Ok((
        InputFile {
            path: meta.location.clone(),
            display,
            date,
            size: meta.size,
            rows,
            meta,
        },
        schema,
    ))
}

/// After a read failed mid-query: reads every file in full to find the one
/// that is broken, so the message can name it. Only runs on the failure path.
pub async fn find_unreadable(loc: &Location, files: &[InputFile]) -> Option<(String, String)> {
    for file in files {
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(loc.store.clone(), file.path.clone())
            .with_file_size(file.size);
        let stream = match ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .and_then(|b| b.build())
        {
            Ok(stream) => stream,
            Err(e) => {
                return Some((
                    file.display.clone(),
                    format!("not a valid Parquet file ({e})"),
                ))
            }
        };
        let drained: std::result::Result<Vec<_>, _> =
            stream.map_ok(|batch| batch.num_rows()).try_collect().await;
        if let Err(e) = drained {
            return Some((
                file.display.clone(),
                format!("the file's data cannot be read ({e})"),
            ));
        }
    }
    None
}

fn parquet_error(file: &str, err: ParquetError) -> Error {
    if let ParquetError::External(inner) = &err {
        if inner.downcast_ref::<object_store::Error>().is_some() {
            return Error::storage(file, &err);
        }
    }
    Error::data(file, format!("not a valid Parquet file ({err})"))
}

fn is_string_like(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => true,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Dictionary(_, v) => is_string_like(v),
        _ => false,
    }
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Null)
}

/// Required columns present and every SPEC column of a usable type.
fn check_file_schema(file: &str, schema: &Schema) -> Result<()> {
    for name in REQUIRED {
        if schema.field_with_name(name).is_err() {
            return Err(Error::data(
                file,
                format!("required column '{name}' is missing"),
            ));
        }
    }
    for field in schema.fields() {
        let (name, t) = (field.name().as_str(), field.data_type());
        let ok = match name {
            "event_time" => matches!(t, DataType::Timestamp(_, _)),
            "revenue" => is_numeric(t),
            n if SPEC_ORDER.contains(&n) => is_string_like(t),
            _ => true,
        };
        if !ok {
            let expected = match name {
                "event_time" => "a timestamp",
                "revenue" => "a number (integer, float or decimal)",
                _ => "a string",
            };
            return Err(Error::data(
                file,
                format!("column '{name}' has type {t}, expected {expected}"),
            ));
        }
    }
    Ok(())
}

/// SPEC columns keep their canonical types; other columns take their type
/// from the files: equal types stay, mixed numbers become DOUBLE, mixed
/// strings become UTF8, mixed timestamps become timestamp[us, UTC]; anything
/// else is a data error naming both files.
fn merge_schemas(files: &[(InputFile, SchemaRef)]) -> Result<Schema> {
    let mut fields: Vec<Field> = spec_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut extra: BTreeMap<String, (usize, DataType, String)> = BTreeMap::new();
    let mut order = 0usize;
    for (file, schema) in files {
        for field in schema.fields() {
            let name = field.name();
            if SPEC_ORDER.contains(&name.as_str()) || name == PARTITION_COLUMN {
                continue;
            }
            let t = field.data_type().clone();
            match extra.get_mut(name) {
                None => {
                    extra.insert(name.clone(), (order, t, file.display.clone()));
                    order += 1;
                }
                Some((_, seen, first_file)) => {
                    if *seen == t {
                        continue;
                    }
                    let merged = if is_numeric(seen) && is_numeric(&t) {
                        DataType::Float64
                    } else if is_string_like(seen) && is_string_like(&t) {
                        DataType::Utf8
                    } else if matches!(seen, DataType::Timestamp(_, _))
                        && matches!(t, DataType::Timestamp(_, _))
                    {
                        event_time_type()
                    } else {
                        return Err(Error::data(
                            file.display.clone(),
                            format!("column '{name}' has type {t} here but {seen} in {first_file}; the types cannot be reconciled"),
                        ));
                    };
                    *seen = merged;
                }
            }
        }
    }
    let mut extra: Vec<_> = extra.into_iter().collect();
    extra.sort_by_key(|(_, (order, _, _))| *order);
    for (name, (_, t, _)) in extra {
        let t = match t {
            // Dictionary and view encodings are a storage detail; read them as plain strings.
            t if is_string_like(&t)
                && !matches!(
                    t,
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                ) =>
            {
                DataType::Utf8
            }
            DataType::Null => DataType::Utf8,
            t => t,
        };
        fields.push(Field::new(name, t, true));
    }
    Ok(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> InputFile {
        InputFile {
            path: Path::from(name),
            display: name.into(),
            date: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            meta: object_store::ObjectMeta {
                location: Path::from(name),
                last_modified: chrono::Utc::now(),
                size: 1,
                e_tag: None,
                version: None,
            },
            size: 1,
            rows: 1,
        }
    }

    fn schema(fields: Vec<(&str, DataType)>) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .into_iter()
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn missing_required_column_names_file_and_column() {
        let s = schema(vec![
            ("event_id", DataType::Utf8),
            ("event_type", DataType::Utf8),
        ]);
        let e = check_file_schema("s3://b/x.parquet", &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s3://b/x.parquet") && e.contains("'event_time'"),
            "{e}"
        );
    }

    #[test]
    fn event_time_as_string_is_a_data_error() {
        let s = schema(vec![
            ("event_id", DataType::Utf8),
            ("event_type", DataType::Utf8),
            ("event_time", DataType::Utf8),
        ]);
        let e = check_file_schema("f", &s).unwrap_err();
        assert_eq!(e.exit_code(), 65);
        assert!(e.to_string().contains("expected a timestamp"));
    }

    #[test]
    fn extra_columns_merge_numbers_to_double_and_keep_first_seen_order() {
        let a = schema(vec![
            ("z_score", DataType::Int32),
            ("b_tag", DataType::Utf8View),
        ]);
        let b = schema(vec![
            ("z_score", DataType::Float64),
            ("a_new", DataType::Boolean),
        ]);
        let merged = merge_schemas(&[(file("a"), a), (file("b"), b)]).unwrap();
        let names: Vec<_> = merged
            .fields()
            .iter()
            .skip(13)
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("z_score".to_string(), DataType::Float64),
                ("b_tag".to_string(), DataType::Utf8),
                ("a_new".to_string(), DataType::Boolean)
            ]
        );
    }

    #[test]
    fn irreconcilable_extra_column_types_name_both_files() {
        let a = schema(vec![("x", DataType::Int32)]);
        let b = schema(vec![("x", DataType::Utf8)]);
        let e = merge_schemas(&[(file("a.parquet"), a), (file("b.parquet"), b)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.parquet") && e.contains("b.parquet") && e.contains("'x'"),
            "{e}"
        );
    }
}
