"""Generic helpers for the Python end-to-end tests of convmart.

Import them in a test module with `from conftest import run_convmart, ...`
(pytest puts this folder on sys.path). Nothing here knows about a scenario;
S3 lives in s3server.py.

- convmart_bin(): the binary under test: env CONVMART_BIN (relative paths are
  taken from the repo root), default target/debug/convmart.
- run_convmart(*args): run it, return the CompletedProcess (text output).
- read_arrow / read_table: one table's partition event_date=D as a pyarrow
  Table / as a list of dicts, read file by file (no Hive discovery, so the
  partition column is never invented by the reader).
- table_files(out, table, date): the files of that partition.
- manifest(out, date): the run manifest `<out>/_runs/event_date=D.json`.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
DEFAULT_BIN = "target/debug/convmart"


def convmart_bin() -> Path:
    p = Path(os.environ.get("CONVMART_BIN", DEFAULT_BIN))
    return p if p.is_absolute() else REPO / p


def run_convmart(*args, env: dict | None = None, cwd: Path | str | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run convmart with `args` (converted to str); never raises on a non-zero exit."""
    exe = convmart_bin()
    if not exe.is_file():
        pytest.fail(f"convmart binary not found at {exe}: build it with `cargo build` "
                    f"or point CONVMART_BIN at it", pytrace=False)
    full_env = dict(os.environ)
    full_env.setdefault("RUST_BACKTRACE", "0")
    if env:
        full_env.update(env)
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def table_dir(output_dir: Path | str, table: str, date: str) -> Path:
    return Path(output_dir) / table / f"event_date={date}"


def table_files(output_dir: Path | str, table: str, date: str) -> list[Path]:
    """Parquet files of one table partition, sorted by name (hidden/underscore names ignored)."""
    d = table_dir(output_dir, table, date)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir()
                  if p.is_file() and p.name.endswith(".parquet") and p.name[0] not in "._")


def read_arrow(output_dir: Path | str, table: str, date: str) -> pa.Table | None:
    """All files of `<out>/<table>/event_date=D/` concatenated; None when there is no file."""
    files = table_files(output_dir, table, date)
    if not files:
        return None
    tables = [pq.ParquetFile(f).read() for f in files]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def read_table(output_dir: Path | str, table: str, date: str) -> list[dict]:
    """Rows of `<out>/<table>/event_date=D/*.parquet` as dicts, in file then row order."""
    t = read_arrow(output_dir, table, date)
    return [] if t is None else t.to_pylist()


def manifest(output_dir: Path | str, date: str) -> dict:
    p = Path(output_dir) / "_runs" / f"event_date={date}.json"
    assert p.is_file(), f"no run manifest at {p}"
    return json.loads(p.read_text())
