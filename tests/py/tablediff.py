"""Helpers for the end-to-end Python tests: run the convmart binary (failing
on a non-zero exit), read an output partition, and compare two tables row for
row with a readable diff (doubles within a relative tolerance)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, convmart_bin  # noqa: F401  (re-exported)
from conftest import run_convmart as _run_convmart

TABLES = ("campaign_daily", "dimension_summary", "conversions_by_name", "rejected_events")

METRICS = (
    "events", "users", "hard_conversions", "soft_conversions", "hard_converters",
    "soft_converters", "hard_value", "soft_value", "assisted_hard_conversions",
    "hard_conversion_rate", "soft_conversion_rate",
)
UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
# SPEC section 4 column order of each summary table
COLUMNS = {
    "campaign_daily": UTM + ("device_type", "country") + METRICS,
    "dimension_summary": ("dimension", "dimension_value") + METRICS,
    "conversions_by_name": ("conversion_name", "kind", "utm_source", "utm_medium",
                            "utm_campaign", "conversions", "converters", "value"),
}
DOUBLE_COLUMNS = {"hard_value", "soft_value", "hard_conversion_rate",
                  "soft_conversion_rate", "value"}
SPEC_INPUT_COLUMNS = (
    "event_id", "event_time", "event_type", "user_id", "anonymous_id", *UTM,
    "device_type", "country", "revenue",
)


def run_convmart(*args, env: dict | None = None, check: bool = True,
                 timeout: float = 900) -> subprocess.CompletedProcess:
    """conftest.run_convmart, failing the test (with stderr) on a non-zero exit
    unless check=False."""
    proc = _run_convmart(*args, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        cmd = " ".join([str(convmart_bin()), *map(str, args)])
        pytest.fail(f"{cmd} exited {proc.returncode}\n"
                    f"--- stderr (tail) ---\n{proc.stderr[-4000:]}", pytrace=False)
    return proc


def read_partition(output_dir, table: str, date: str, allow_missing: bool = False):
    """All `.parquet` files of `<output>/<table>/event_date=<date>/` as one table
    (None when there is none and allow_missing)."""
    part = Path(output_dir) / table / f"event_date={date}"
    files = sorted(p for p in part.glob("*.parquet") if not p.name.startswith(("_", ".")))
    if not files and allow_missing:
        return None
    assert files, f"no parquet files in {part}"
    tables = [pq.read_table(f) for f in files]
    schema = tables[0].schema
    for f, t in zip(files[1:], tables[1:]):
        assert t.schema.equals(schema), f"{f} schema differs from {files[0]}"
    return pa.concat_tables(tables)


def _sort_key(row, double_idx):
    key = []
    for i, v in enumerate(row):
        if i in double_idx:
            continue
        key.append((v is None, "" if v is None else str(type(v)), v if v is not None else 0))
    for i in double_idx:
        v = row[i]
        key.append((v is None, 0.0 if v is None or math.isnan(v) else float(f"{v:.9g}")))
    return tuple(key)


def _close(a, b, rel: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return a == b


def diff_tables(left: pa.Table, right: pa.Table, *, names=("left", "right"),
                rel: float = 1e-9, max_rows: int = 10) -> str | None:
    """None when equal as multisets of rows (doubles within `rel`); else a
    readable description: schema differences, then the first differing rows
    matched on their non-double columns."""
    lname, rname = names
    problems = []
    if left.schema.names != right.schema.names:
        return (f"column names differ:\n  {lname}: {left.schema.names}\n"
                f"  {rname}: {right.schema.names}")
    for f_l, f_r in zip(left.schema, right.schema):
        if f_l.type != f_r.type:
            problems.append(f"column {f_l.name}: type {f_l.type} ({lname}) vs {f_r.type} ({rname})")
    cols = left.schema.names
    double_idx = {i for i, f in enumerate(left.schema) if pa.types.is_floating(f.type)}
    lrows = sorted((tuple(r.values()) for r in left.to_pylist()), key=lambda r: _sort_key(r, double_idx))
    rrows = sorted((tuple(r.values()) for r in right.to_pylist()), key=lambda r: _sort_key(r, double_idx))
    if len(lrows) != len(rrows):
        problems.append(f"row counts differ: {len(lrows)} ({lname}) vs {len(rrows)} ({rname})")

    def key(r):
        return tuple(v for i, v in enumerate(r) if i not in double_idx)

    lmap, rmap = {}, {}
    for r in lrows:
        lmap.setdefault(key(r), []).append(r)
    for r in rrows:
        rmap.setdefault(key(r), []).append(r)
    shown = 0
    lines = []
    for k in sorted(set(lmap) | set(rmap), key=lambda k: tuple((v is None, str(v)) for v in k)):
        ls, rs = lmap.get(k, []), rmap.get(k, [])
        pairs = list(zip(ls, rs))
        bad = [(a, b) for a, b in pairs if not all(_close(x, y, rel) for x, y in zip(a, b))]
        extra_l, extra_r = ls[len(rs):], rs[len(ls):]
        if not (bad or extra_l or extra_r):
            continue
        if shown >= max_rows:
            lines.append("  ...")
            break
        shown += 1
        for a, b in bad:
            detail = ", ".join(
                f"{c}: {x!r} vs {y!r}" for c, x, y in zip(cols, a, b) if not _close(x, y, rel))
            lines.append(f"  row {dict(zip(cols, a))}\n    differs -> {detail}")
        for a in extra_l:
            lines.append(f"  only in {lname}: {dict(zip(cols, a))}")
        for b in extra_r:
            lines.append(f"  only in {rname}: {dict(zip(cols, b))}")
    if lines:
        problems.append("rows differ (first differences, matched on non-double columns):\n"
                        + "\n".join(lines))
    return "\n".join(problems) if problems else None


def assert_tables_equal(left: pa.Table, right: pa.Table, what: str, names=("left", "right")):
    d = diff_tables(left, right, names=names)
    if d is not None:
        pytest.fail(f"{what}: tables differ\n{d}", pytrace=False)
