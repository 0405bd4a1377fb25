#!/usr/bin/env python3
"""The convmart job (SPEC sections 1-4) in Polars: the benchmark's second peer.

    reference_polars.py --input DIR --output DIR --date D
                        [--lookback-days N] [--attribution last_touch|event] [--rules FILE]

Same command line, exit codes and output layout as reference_duckdb.py
(`<output>/<table>/event_date=D/part-polars.parquet`, zstd); the rule file
parsing, file listing and schema checks are shared with it, the semantics
are written again with Polars' lazy API. Threads: POLARS_MAX_THREADS.

- input: one lazy scan per file (streaming engine, never collected whole) with its own casts (event_time to
  Datetime(us, UTC), naive = UTC; revenue to Float64; SPEC strings to String),
  concatenated diagonally (a missing column is null);
- dedup: ids seen once pass; repeated ids are sorted by event_time,
  partition, the other SPEC columns (NULLs last), rule position and value
  (docs/contract-notes.md) and the first row kept;
- last touch / assisted: join_asof backward by user key (strict for softs),
  then a check that the match lies within L days;
- counts of distinct user keys ignore nulls.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_duckdb import (  # noqa: E402  (shared plumbing, not semantics)
    EXIT_ARGS, EXIT_DATA, EXIT_NO_INPUT, GRAIN, SPEC_COLUMNS, UTM, Fail,
    inspect_schemas, load_rules, partition_files,
)

TS = pl.Datetime("us", "UTC")


def log(msg: str) -> None:
    print(f"[reference_polars] {msg}", file=sys.stderr, flush=True)


def scan_file(path: Path, day: dt.date, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    exprs = []
    for c in SPEC_COLUMNS:
        if c not in schema:
            dtype = TS if c == "event_time" else (pl.Float64 if c == "revenue" else pl.String)
            exprs.append(pl.lit(None, dtype=dtype).alias(c))
            continue
        t = schema[c]
        if c == "event_time":
            if not isinstance(t, pl.Datetime):
                raise Fail(EXIT_DATA, f"{path}: event_time is {t}, not a timestamp")
            e = pl.col(c)
            e = e.dt.convert_time_zone("UTC") if t.time_zone else e.dt.replace_time_zone("UTC")
            exprs.append(e.cast(TS))
        elif c == "revenue":
            if not (t.is_numeric() or t == pl.Null):
                raise Fail(EXIT_DATA, f"{path}: revenue is {t}, not numeric")
            exprs.append(pl.col(c).cast(pl.Float64))
        else:
            exprs.append(pl.col(c).cast(pl.String))
    others = [pl.col(c) for c in schema if c not in SPEC_COLUMNS]
    return pl.scan_parquet(path).select(*exprs, *others, pl.lit(day).alias("__part"))


def rule_exprs(rules: list[dict]):
    """(name, kind, value, 1-based position) of the first rule that matches."""
    name = kind = value = pos = None
    for i, r in reversed(list(enumerate(rules))):  # the first-match chain, from the end
        cond = pl.sql_expr(r["when"]).fill_null(False)
        v = (pl.sql_expr(r["value"]).cast(pl.Float64).fill_null(0.0)
             if r.get("value") not in (None, "") else pl.lit(0.0))
        name = pl.when(cond).then(pl.lit(r["name"])).otherwise(
            name if name is not None else pl.lit(None, pl.String))
        kind = pl.when(cond).then(pl.lit(r["kind"])).otherwise(
            kind if kind is not None else pl.lit(None, pl.String))
        value = pl.when(cond).then(v).otherwise(
            value if value is not None else pl.lit(None, pl.Float64))
        pos = pl.when(cond).then(pl.lit(i + 1)).otherwise(
            pos if pos is not None else pl.lit(None, pl.Int32))
    if name is None:
        return (pl.lit(None, pl.String), pl.lit(None, pl.String), pl.lit(None, pl.Float64),
                pl.lit(None, pl.Int32))
    return name, kind, value, pos


def nz(e: pl.Expr) -> pl.Expr:
    return pl.when(e.is_null() | (e == "")).then(pl.lit("(not set)")).otherwise(e)


def metrics() -> list[pl.Expr]:
    hard, soft = pl.col("__kind") == "hard", pl.col("__kind") == "soft"
    uk = pl.col("__ukey")
    return [
        pl.len().cast(pl.Int64).alias("events"),
        uk.drop_nulls().n_unique().cast(pl.Int64).alias("users"),
        hard.sum().cast(pl.Int64).alias("hard_conversions"),
        soft.sum().cast(pl.Int64).alias("soft_conversions"),
        uk.filter(hard).drop_nulls().n_unique().cast(pl.Int64).alias("hard_converters"),
        uk.filter(soft).drop_nulls().n_unique().cast(pl.Int64).alias("soft_converters"),
        pl.col("__value").filter(hard).sum().cast(pl.Float64).alias("hard_value"),
        pl.col("__value").filter(soft).sum().cast(pl.Float64).alias("soft_value"),
        pl.col("__assisted").sum().cast(pl.Int64).alias("assisted_hard_conversions"),
    ]


RATES = [
    pl.when(pl.col("users") == 0).then(None)
    .otherwise(pl.col("hard_converters") / pl.col("users")).alias("hard_conversion_rate"),
    pl.when(pl.col("users") == 0).then(None)
    .otherwise(pl.col("soft_converters") / pl.col("users")).alias("soft_conversion_rate"),
]


def to_arrow(df: pl.DataFrame) -> pa.Table:
    """Plain `string` columns (not large/view) like the other engines write."""
    t = df.to_arrow(compat_level=pl.CompatLevel.oldest())
    fields = [pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f
              for f in t.schema]
    return t.cast(pa.schema(fields))


def run(args) -> dict:
    t0 = time.perf_counter()
    day = dt.date.fromisoformat(args.date)
    L = args.lookback_days
    if L < 0:
        raise Fail(EXIT_ARGS, "--lookback-days must be >= 0")
    rules = load_rules(args.rules)
    input_dir, output_dir = Path(args.input), Path(args.output)
    days = [day - dt.timedelta(days=k) for k in range(L, -1, -1)]
    files = [(d, f) for d in days for f in partition_files(input_dir, d)]
    if not any(d == day for d, _ in files):
        raise Fail(EXIT_NO_INPUT, f"no input partition for {day} under {input_dir}")
    seen_cols = inspect_schemas([f for _, f in files])
    others = [c for c in seen_cols if c not in SPEC_COLUMNS]
    input_columns = [c for c in SPEC_COLUMNS if c in seen_cols] + others

    scans = []
    for d, f in files:
        try:
            schema = dict(pl.read_parquet_schema(f))
        except Exception as e:  # noqa: BLE001
            raise Fail(EXIT_DATA, f"{f}: not a valid Parquet file ({e})")
        scans.append(scan_file(f, d, schema))
    raw = pl.concat(scans, how="diagonal_relaxed").with_columns(
        pl.when(pl.col("event_id").is_null() | (pl.col("event_id") == ""))
        .then(pl.lit("missing_event_id"))
        .when(pl.col("event_type").is_null() | (pl.col("event_type") == ""))
        .then(pl.lit("missing_event_type"))
        .when(pl.col("event_time").is_null()).then(pl.lit("missing_event_time"))
        .otherwise(pl.lit(None, pl.String)).alias("__reject_reason"))
    # Nothing is collected whole: the input stays lazy (streaming engine) and
    # only the columns and rows later steps need are kept.
    rejected = (raw.filter(pl.col("__reject_reason").is_not_null() & (pl.col("__part") == day))
                .select(*input_columns, pl.col("__reject_reason").alias("reject_reason"))
                .sort("event_id", nulls_last=False))
    valid = raw.filter(pl.col("__reject_reason").is_null())
    try:
        counts = valid.select(pl.len()).collect(engine="streaming").item()
        dup_ids = (valid.group_by("event_id").agg(pl.len().alias("__n"))
                   .filter(pl.col("__n") > 1).select("event_id").collect(engine="streaming"))
    except pl.exceptions.PolarsError as e:
        raise Fail(EXIT_DATA, f"reading input: {e}")
    t_scan = time.perf_counter()

    # ---- dedup + classification: ids seen once pass, repeated ids are ranked
    # by the documented tie rule (docs/contract-notes.md): event_time,
    # partition, then the other SPEC columns in SPEC order ascending with NULLs
    # last, then the matched rule's position, then its value.
    tiebreak = [c for c in SPEC_COLUMNS if c not in ("event_id", "event_time")]
    name, kind, value, pos = rule_exprs(rules)
    keep = ["event_id", "event_time", "__part", "__ukey", "__touch", *UTM, "device_type",
            "country", "__conv_name", "__kind", "__value"]

    def classify(lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.with_columns(
            pl.coalesce("user_id", "anonymous_id").alias("__ukey"),
            (pl.col("utm_source").is_not_null() & (pl.col("utm_source") != ""))
            .alias("__touch"),
            name.alias("__conv_name"), kind.alias("__kind"), value.alias("__value"),
            pos.alias("__rule_pos"),
        )

    dups = dup_ids.lazy()
    ranked = (classify(valid.join(dups, on="event_id", how="semi"))
              .sort(["event_id", "event_time", "__part", *tiebreak, "__rule_pos", "__value"],
                    nulls_last=True)
              .unique(subset="event_id", keep="first", maintain_order=True))
    # only events of D, touches and soft conversions can matter for D
    matters = (pl.col("__part") == day) | pl.col("__touch") | (pl.col("__kind") == "soft")
    try:
        surv = pl.concat([
            classify(valid.join(dups, on="event_id", how="anti")).filter(matters).select(keep),
            ranked.filter(matters).select(keep),
        ]).collect(engine="streaming")
    except pl.exceptions.PolarsError as e:
        names = ", ".join(r["name"] for r in rules)
        raise Fail(EXIT_ARGS, f"rules ({names}) do not evaluate on the input: {e}")
    rows_read = counts  # valid rows; rejected ones are added below
    t_dedup = time.perf_counter()

    # ---- attribution of the events of D, assisted hard conversions
    window = pl.duration(days=L)
    e = (surv.lazy().filter(pl.col("__part") == day)
         .select("event_id", "event_time", "__ukey", "__touch", "__conv_name", "__kind",
                 "__value", *UTM, "device_type", "country")
         .sort("event_time"))
    direct = {"utm_source": "(direct)", "utm_medium": "(none)"}
    if args.attribution == "last_touch":
        touches = (surv.lazy().filter(pl.col("__touch") & pl.col("__ukey").is_not_null())
                   .select("__ukey", "event_time", "event_id", *UTM)
                   .sort("event_id", descending=True)
                   .unique(subset=["__ukey", "event_time"], keep="first")
                   .select("__ukey", pl.col("event_time").alias("__t_time"),
                           *[pl.col(c).alias(f"__t_{c}") for c in UTM])
                   .sort("__t_time"))
        e = e.join_asof(touches, left_on="event_time", right_on="__t_time", by="__ukey",
                        strategy="backward", allow_exact_matches=True, check_sortedness=False)
        in_window = pl.col("__t_time").is_not_null() & (
            pl.col("__t_time") >= pl.col("event_time") - window)
    softs = (surv.lazy().filter((pl.col("__kind") == "soft") & pl.col("__ukey").is_not_null())
             .select("__ukey", pl.col("event_time").alias("__s_time")).unique()
             .sort("__s_time"))
    e = e.join_asof(softs, left_on="event_time", right_on="__s_time", by="__ukey",
                    strategy="backward", allow_exact_matches=False, check_sortedness=False)
    dims = []
    for c in UTM:
        fallback = pl.lit(direct.get(c, "(not set)"))
        expr = pl.when(pl.col("__touch")).then(nz(pl.col(c)))
        if args.attribution == "last_touch":
            expr = expr.when(in_window).then(nz(pl.col(f"__t_{c}")))
        dims.append(expr.otherwise(fallback).alias(c))
    dims += [nz(pl.col(c)).alias(c) for c in ("device_type", "country")]
    fact = e.select(
        *dims, "__ukey", "__conv_name", "__kind", "__value",
        ((pl.col("__kind") == "hard") & pl.col("__s_time").is_not_null()
         & (pl.col("__s_time") >= pl.col("event_time") - window)).fill_null(False)
        .alias("__assisted"),
    ).collect()
    t_attr = time.perf_counter()

    # ---- aggregates
    f = fact.lazy()
    grain = list(GRAIN)
    campaign = f.group_by(grain).agg(metrics()).with_columns(RATES).sort(grain)
    parts = [f.select(pl.lit("total").alias("dimension"),
                      pl.lit("(all)").alias("dimension_value"), *metrics())]
    for c in GRAIN:
        parts.append(f.group_by(c).agg(metrics()).select(
            pl.lit(c).alias("dimension"), pl.col(c).alias("dimension_value"),
            pl.exclude(c)))
    rank = {d: i for i, d in enumerate(("total",) + GRAIN)}
    dimension = (pl.concat(parts).with_columns(RATES)
                 .sort([pl.col("dimension").replace_strict(rank, return_dtype=pl.Int32),
                        "dimension_value"]))
    byname_grain = ["__conv_name", "__kind", "utm_source", "utm_medium", "utm_campaign"]
    byname = (f.filter(pl.col("__conv_name").is_not_null()).group_by(byname_grain).agg(
        pl.len().cast(pl.Int64).alias("conversions"),
        pl.col("__ukey").drop_nulls().n_unique().cast(pl.Int64).alias("converters"),
        pl.col("__value").sum().cast(pl.Float64).alias("value"))
        .rename({"__conv_name": "conversion_name", "__kind": "kind"})
        .sort(["conversion_name", "kind", "utm_source", "utm_medium", "utm_campaign"]))
    frames = pl.collect_all([campaign, dimension, byname])
    frames.append(rejected.collect(engine="streaming"))
    counts = {}
    for table, df in zip(("campaign_daily", "dimension_summary", "conversions_by_name",
                          "rejected_events"), frames):
        part = output_dir / table / f"event_date={day.isoformat()}"
        if part.exists():
            shutil.rmtree(part)
        part.mkdir(parents=True)
        pq.write_table(to_arrow(df), part / "part-polars.parquet", compression="zstd")
        counts[table] = df.height
    t_end = time.perf_counter()
    stats = {
        "files": len(files), "valid_rows_read": rows_read, "relevant_survivors": surv.height,
        "events_of_d": fact.height, "tables": counts,
        "seconds": {
            "scan": round(t_scan - t0, 3), "dedup_classify": round(t_dedup - t_scan, 3),
            "attribute": round(t_attr - t_dedup, 3), "aggregate_write": round(t_end - t_attr, 3),
            "total": round(t_end - t0, 3),
        },
    }
    log(f"{day}: {stats}")
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--lookback-days", type=int, default=30)
    ap.add_argument("--attribution", choices=("last_touch", "event"), default="last_touch")
    ap.add_argument("--rules")
    args = ap.parse_args(argv)
    for a in ("input", "output"):
        v = getattr(args, a)
        if v.startswith("file://"):
            setattr(args, a, v[len("file://"):])
        elif "://" in v:
            print(f"error: --{a} {v}: only local paths are supported", file=sys.stderr)
            return EXIT_ARGS
    try:
        dt.date.fromisoformat(args.date)
    except ValueError:
        print(f"error: --date {args.date!r} is not YYYY-MM-DD", file=sys.stderr)
        return EXIT_ARGS
    try:
        run(args)
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
