"""convmart against a real S3 server (SeaweedFS on loopback), and its output
read back by the BI-side readers a user would point at it: DuckDB (httpfs),
pyarrow.dataset and Polars.

- The same job on S3 and on the local disk gives the same tables.
- DuckDB, pyarrow and Polars agree on row counts, column names (SPEC section 4
  order) and types of every output table, with `event_date` from the path.
- The manifest `s3://bucket/out/_runs/event_date=D.json` lists exactly the
  files present.
- A re-run of the same date leaves exactly one run's files per partition.
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.dataset as ds
import polars as pl
import pytest

from s3server import s3  # noqa: F401  (session fixture: SeaweedFS on loopback)
from tablediff import (COLUMNS, SPEC_INPUT_COLUMNS, TABLES, diff_tables, read_partition,
                       run_convmart)

START = dt.date(2024, 5, 1)
DAYS = 5
EVENTS_PER_DAY = 3000
SEED = 7
LOOKBACK = 3
D = (START + dt.timedelta(days=DAYS - 1)).isoformat()

INPUT_PREFIX = "events"
OUTPUT_PREFIX = "out"

DOUBLES = {"hard_value", "soft_value", "hard_conversion_rate", "soft_conversion_rate", "value"}


def expected_kind(column: str) -> str:
    """'string' | 'int64' | 'double' for a summary-table column (SPEC section 4)."""
    if column in DOUBLES:
        return "double"
    if column in COLUMNS["campaign_daily"][:7] or column in (
            "dimension", "dimension_value", "conversion_name", "kind"):
        return "string"
    return "int64"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Generated input and the same job run on the local disk."""
    root = tmp_path_factory.mktemp("s3_readers")
    run_convmart("generate", "--output", root / "input", "--start-date", START.isoformat(),
                 "--days", DAYS, "--events-per-day", EVENTS_PER_DAY, "--seed", SEED)
    run_convmart("run", "--input", root / "input", "--output", root / "out_local",
                 "--date", D, "--lookback-days", LOOKBACK)
    return root


def run_on_s3(s3):
    return run_convmart("run", "--input", s3.url(INPUT_PREFIX), "--output", s3.url(OUTPUT_PREFIX),
                        "--date", D, "--lookback-days", LOOKBACK, env=s3.env())


def read_manifest(s3) -> dict:
    return json.loads(s3.read_bytes(f"{OUTPUT_PREFIX}/_runs/event_date={D}.json"))


@pytest.fixture(scope="module")
def s3_run(s3, local):
    """Input uploaded to s3://bucket/events, the job run into s3://bucket/out."""
    s3.delete_prefix(INPUT_PREFIX)
    s3.delete_prefix(OUTPUT_PREFIX)
    uploaded = s3.upload_dir(local / "input", INPUT_PREFIX)
    assert uploaded, "convmart generate wrote nothing to upload"
    proc = run_on_s3(s3)
    # secrets never appear in logs (SPEC section 5)
    assert s3.secret_key not in proc.stderr + proc.stdout
    return {"manifest": read_manifest(s3)}


def test_s3_run_gives_the_same_tables_as_a_local_run(s3, local, s3_run, tmp_path):
    s3.download_dir(OUTPUT_PREFIX, tmp_path / "from_s3")
    failures = []
    for table in TABLES:
        optional = table == "rejected_events"
        on_s3 = read_partition(tmp_path / "from_s3", table, D, allow_missing=optional)
        on_disk = read_partition(local / "out_local", table, D, allow_missing=optional)
        if on_s3 is None or on_disk is None:
            if (on_s3 is None) != (on_disk is None):
                failures.append(f"{table}: a file on one side only (s3: {on_s3 is not None}, "
                                f"local: {on_disk is not None})")
            continue
        if table != "rejected_events":
            assert on_s3.num_rows > 0, f"{table} is empty: the generated data should fill it"
        d = diff_tables(on_s3, on_disk, names=("s3", "local"))
        if d:
            failures.append(f"== {table} ==\n{d}")
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


# ----------------------------------------------------------------- readers
def duckdb_read(s3, table):
    con = s3.duckdb_connection()
    src = (f"read_parquet('{s3.url(OUTPUT_PREFIX)}/{table}/*/*.parquet', "
           f"hive_partitioning = true)")
    described = con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()
    names = [r[0] for r in described]
    types = {r[0]: r[1] for r in described}
    count = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
    dates = [r[0] for r in con.execute(
        f"SELECT DISTINCT CAST(event_date AS VARCHAR) FROM {src}").fetchall()]
    return names, types, count, dates


def pyarrow_read(s3, table, partitioning="hive"):
    dataset = ds.dataset(f"{s3.bucket}/{OUTPUT_PREFIX}/{table}", filesystem=s3.filesystem(),
                         format="parquet", partitioning=partitioning)
    return dataset.to_table()


def polars_read(s3, table):
    # Polars' own object_store-based S3 client does path-style requests over
    # plain HTTP with these storage_options; no pyarrow detour needed.
    return pl.scan_parquet(f"{s3.url(OUTPUT_PREFIX)}/{table}/*/*.parquet", hive_partitioning=True,
                           storage_options=s3.polars_storage_options()).collect()


@pytest.mark.parametrize("table", TABLES)
def test_duckdb_pyarrow_and_polars_read_the_same_table_from_s3(s3, s3_run, table):
    manifest_rows = s3_run["manifest"]["tables"][table]["rows"]
    if table == "rejected_events" and not s3.list(f"{OUTPUT_PREFIX}/{table}"):
        assert manifest_rows == 0, "rejected_events has rows in the manifest but no file"
        pytest.fail("rejected_events has no file for D: the generated data should contain "
                    "rejected rows (or the table should still have a file)", pytrace=False)

    d_names, d_types, d_count, d_dates = duckdb_read(s3, table)
    pa_tbl = pyarrow_read(s3, table)
    pl_df = polars_read(s3, table)

    # Row counts: all three readers and the manifest agree.
    assert d_count == pa_tbl.num_rows == pl_df.height == manifest_rows, (
        f"rows: duckdb {d_count}, pyarrow {pa_tbl.num_rows}, polars {pl_df.height}, "
        f"manifest {manifest_rows}")

    # Column names: the table's columns, then the Hive column from the path.
    if table in COLUMNS:
        expected = list(COLUMNS[table]) + ["event_date"]
    else:
        expected = d_names  # rejected_events: input columns, checked below
        present = [c for c in d_names if c in SPEC_INPUT_COLUMNS]
        assert present == [c for c in SPEC_INPUT_COLUMNS if c in present], \
            f"SPEC input columns not first in SPEC order: {d_names}"
        assert d_names[:len(present)] == present, f"SPEC columns not first: {d_names}"
        assert d_names[-2:] == ["reject_reason", "event_date"], d_names
        for c in ("event_id", "event_time", "event_type"):
            assert c in d_names, f"required input column {c} missing from rejected_events"
    assert d_names == expected, f"duckdb columns {d_names}"
    assert pa_tbl.schema.names == expected, f"pyarrow columns {pa_tbl.schema.names}"
    assert pl_df.columns == expected, f"polars columns {pl_df.columns}"

    # Types. Each reader's natural type: DuckDB VARCHAR/BIGINT/DOUBLE,
    # pyarrow string (not large_string/string_view)/int64/double, Polars
    # String/Int64/Float64 (Polars has a single string type).
    duck = {"string": "VARCHAR", "int64": "BIGINT", "double": "DOUBLE"}
    arrow = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64()}
    polars = {"string": pl.String, "int64": pl.Int64, "double": pl.Float64}
    if table in COLUMNS:
        kinds = {c: expected_kind(c) for c in COLUMNS[table]}
    else:
        kinds = {c: "string" for c in SPEC_INPUT_COLUMNS if c in d_names
                 and c not in ("event_time", "revenue")}
        kinds["reject_reason"] = "string"
        if "revenue" in d_names:
            kinds["revenue"] = "double"
        assert d_types["event_time"] == "TIMESTAMP WITH TIME ZONE", d_types["event_time"]
        assert pa_tbl.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
        assert pl_df.schema["event_time"] == pl.Datetime("us", "UTC")
    bad = []
    for c, k in kinds.items():
        if d_types[c] != duck[k]:
            bad.append(f"duckdb {c}: {d_types[c]} (want {duck[k]})")
        if pa_tbl.schema.field(c).type != arrow[k]:
            bad.append(f"pyarrow {c}: {pa_tbl.schema.field(c).type} (want {arrow[k]})")
        if pl_df.schema[c] != polars[k]:
            bad.append(f"polars {c}: {pl_df.schema[c]} (want {polars[k]})")
    assert not bad, "types:\n" + "\n".join(bad)
    # other (non-SPEC) input columns of rejected_events: readers agree on names only.

    # event_date: DuckDB's and Polars' Hive inference give a DATE; pyarrow's
    # "hive" flavour infers strings (it never infers dates), and parses it as
    # a date32 when given the partition schema.
    assert d_types["event_date"] == "DATE", d_types["event_date"]
    assert d_dates == [D]
    assert pl_df.schema["event_date"] == pl.Date
    assert set(pl_df["event_date"].cast(pl.String).unique().to_list()) == {D}
    assert set(pa_tbl.column("event_date").to_pylist()) == {D}
    typed = pyarrow_read(s3, table, ds.partitioning(
        pa.schema([("event_date", pa.date32())]), flavor="hive"))
    assert typed.schema.field("event_date").type == pa.date32()
    assert set(typed.column("event_date").to_pylist()) == {dt.date.fromisoformat(D)}


# ----------------------------------------------------------------- manifest
def table_objects(s3, table) -> dict[str, int]:
    """{path relative to the output root: size} of every object of a table."""
    import pyarrow.fs as pafs
    fs = s3.filesystem()
    base = f"{s3.bucket}/{OUTPUT_PREFIX}"
    infos = fs.get_file_info(pafs.FileSelector(f"{base}/{table}", recursive=True,
                                               allow_not_found=True))
    return {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def assert_manifest_matches_objects(s3, manifest):
    assert manifest["event_date"] == D
    assert set(manifest["tables"]) == set(TABLES), manifest["tables"].keys()
    problems = []
    for table in TABLES:
        entry = manifest["tables"][table]
        listed = {f["path"]: f for f in entry["files"]}
        present = table_objects(s3, table)
        if set(listed) != set(present):
            problems.append(f"{table}: manifest lists {sorted(listed)}, "
                            f"S3 holds {sorted(present)}")
            continue
        for path, f in listed.items():
            assert path.startswith(f"{table}/event_date={D}/"), path
            if f.get("bytes") is not None and f["bytes"] != present[path]:
                problems.append(f"{path}: manifest says {f['bytes']} bytes, S3 has "
                                f"{present[path]}")
        if sum(f["rows"] for f in entry["files"]) != entry["rows"]:
            problems.append(f"{table}: file rows do not add up to {entry['rows']}")
    assert not problems, "\n".join(problems)


def test_manifest_exists_and_lists_exactly_the_files_present(s3, s3_run):
    keys = s3.list(f"{OUTPUT_PREFIX}/_runs")
    assert f"event_date={D}.json" in keys, keys
    assert_manifest_matches_objects(s3, s3_run["manifest"])


def test_rerun_on_s3_leaves_exactly_one_runs_files(s3, s3_run, tmp_path):
    first = s3_run["manifest"]
    run_on_s3(s3)
    second = read_manifest(s3)
    assert second["run_id"] != first["run_id"], "a re-run must have a new run id"
    assert_manifest_matches_objects(s3, second)
    for table in TABLES:
        old = {f["path"] for f in first["tables"][table]["files"]}
        new = {f["path"] for f in second["tables"][table]["files"]}
        left_over = (old - new) & set(table_objects(s3, table))
        assert not left_over, f"{table}: files of the first run remain: {sorted(left_over)}"
        assert second["tables"][table]["rows"] == first["tables"][table]["rows"], table
