#!/usr/bin/env python3
"""An independent implementation of convmart (SPEC sections 1-4) in DuckDB SQL.

Two jobs: the cross-check of the Rust job (tests/py/test_reference_agreement.py
compares the tables row for row) and the benchmark peer ("faster than
DuckDB"). It is written from shared/SPEC.md and docs/contract-notes.md only,
not from convmart's queries, so that a shared misreading is unlikely.

    reference_duckdb.py --input DIR --output DIR --date D
                        [--lookback-days N] [--attribution last_touch|event]
                        [--rules FILE] [--threads N] [--memory-limit SIZE]

Local directories only. Reads `DIR/event_date=D-L .. D/**/*.parquet` in one
scan into a temp table, and writes the four tables to
`<output>/<table>/event_date=D/part-ref.parquet` (zstd), replacing that
partition. Exit codes follow SPEC section 6 (2 bad arguments or rules, 3 no
input for D, 65 data error).

How each SPEC step maps to SQL:
- validity + canonical types: one CTAS over read_parquet(union_by_name);
  event_time -> TIMESTAMPTZ with the session in UTC, so naive timestamps
  (and INT96) are taken as UTC; revenue -> DOUBLE; SPEC strings -> VARCHAR.
- dedup: ids seen once pass through (hash anti-join); only repeated ids go
  through row_number() ordered by event_time, then partition, then the
  remaining columns (contract-notes: deterministic).
- last touch: ASOF LEFT JOIN of D's events on touches (one per user key and
  event_time via max_by(.., event_id): SPEC's tie-break), then a
  check that the touch is within L days. The latest touch at or before t is
  the only candidate: if it is older than t - L days, all others are too.
- assisted: the same ASOF trick with a strict `>` against soft conversions.
- dimension_summary: GROUPING SETS, one per dimension, plus a total row
  computed by an ungrouped aggregate (so it exists even on an empty day).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
import time
import tomllib
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

EXIT_ARGS, EXIT_NO_INPUT, EXIT_DATA = 2, 3, 65

REQUIRED = ("event_id", "event_time", "event_type")
SPEC_COLUMNS = (
    "event_id", "event_time", "event_type", "user_id", "anonymous_id",
    "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
    "device_type", "country", "revenue",
)
STRING_COLUMNS = tuple(c for c in SPEC_COLUMNS if c not in ("event_time", "revenue"))
UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
GRAIN = UTM + ("device_type", "country")
DIMENSIONS = GRAIN  # dimension_summary's non-total dimensions, in SPEC order

DEFAULT_RULES = [
    {"name": "purchase", "kind": "hard", "when": "event_type = 'purchase'", "value": "revenue"},
    {"name": "demo_request", "kind": "hard",
     "when": "event_type IN ('demo_request', 'consultation_request')", "value": "0"},
    {"name": "phone_call", "kind": "hard", "when": "event_type = 'phone_call'", "value": "0"},
    {"name": "email_signup", "kind": "soft",
     "when": "event_type IN ('newsletter_signup', 'email_signup')", "value": "0"},
    {"name": "social_engagement", "kind": "soft",
     "when": "event_type IN ('social_like', 'social_share', 'social_follow')", "value": "0"},
    {"name": "product_affinity", "kind": "soft",
     "when": "event_type IN ('video_complete', 'wishlist_add')", "value": "0"},
]

TABLES = ("campaign_daily", "dimension_summary", "conversions_by_name", "rejected_events")


class Fail(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


def log(msg: str) -> None:
    print(f"[reference_duckdb] {msg}", file=sys.stderr, flush=True)


def q(ident: str) -> str:
    """Quote an identifier."""
    return '"' + ident.replace('"', '""') + '"'


def lit(s: str) -> str:
    """Quote a string literal."""
    return "'" + s.replace("'", "''") + "'"


# --------------------------------------------------------------------- rules
def load_rules(path: str | None) -> list[dict]:
    if path is None:
        return DEFAULT_RULES
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Fail(EXIT_ARGS, f"rules file {path}: {e}")
    rules = doc.get("conversion", [])
    if not isinstance(rules, list):
        raise Fail(EXIT_ARGS, f"rules file {path}: [[conversion]] must be an array of tables")
    seen = set()
    for i, r in enumerate(rules):
        name = r.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name):
            raise Fail(EXIT_ARGS, f"rule #{i + 1}: name {name!r} must match [a-z0-9_]+")
        if name in seen:
            raise Fail(EXIT_ARGS, f"rule {name}: name repeated")
        seen.add(name)
        if r.get("kind") not in ("hard", "soft"):
            raise Fail(EXIT_ARGS, f"rule {name}: kind must be \"hard\" or \"soft\"")
        if not isinstance(r.get("when"), str) or not r["when"].strip():
            raise Fail(EXIT_ARGS, f"rule {name}: `when` is required")
        for key in ("when", "value"):
            if key in r and (not isinstance(r[key], str) or ";" in r[key]):
                raise Fail(EXIT_ARGS, f"rule {name}: `{key}` must be one SQL expression")
    return rules


# --------------------------------------------------------------------- input
def partition_files(input_dir: Path, day: dt.date) -> list[Path]:
    """`.parquet` files of one partition, skipping names that start with _ or ."""
    part = input_dir / f"event_date={day.isoformat()}"
    if not part.is_dir():
        return []
    out = []
    for p in part.rglob("*.parquet"):
        rel = p.relative_to(part).parts
        if any(x.startswith(("_", ".")) for x in rel) or not p.is_file():
            continue
        out.append(p)
    return sorted(out)


def _is_numeric(t) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_null(t))


def inspect_schemas(files: list[Path]) -> list[str]:
    """Union of column names in first-seen order; data errors for bad files."""
    order: list[str] = []
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as e:
            raise Fail(EXIT_DATA, f"{f}: not a valid Parquet file ({e})")
        for req in REQUIRED:
            if req not in schema.names:
                raise Fail(EXIT_DATA, f"{f}: required column {req} is missing")
        # known columns with impossible types are data errors (contract-notes)
        for name, ok in (("event_time", pa.types.is_timestamp), ("revenue", _is_numeric)):
            if name in schema.names and not ok(schema.field(name).type):
                raise Fail(EXIT_DATA, f"{f}: column {name} has type {schema.field(name).type}")
        for name in schema.names:
            if name not in order:
                order.append(name)
    return order


# --------------------------------------------------------------------- job
def run(args) -> dict:
    t_start = time.perf_counter()
    day = dt.date.fromisoformat(args.date)
    lookback = args.lookback_days
    if lookback < 0:
        raise Fail(EXIT_ARGS, "--lookback-days must be >= 0")
    rules = load_rules(args.rules)
    input_dir = Path(args.input)
    output_dir = Path(args.output)

    days = [day - dt.timedelta(days=k) for k in range(lookback, -1, -1)]
    files: list[Path] = []
    for d in days:
        files.extend(partition_files(input_dir, d))
    if not any(f"event_date={day.isoformat()}" in f.parts for f in files):
        raise Fail(EXIT_NO_INPUT, f"no input partition for {day} under {input_dir}")
    seen_cols = inspect_schemas(files)
    # SPEC columns first, in SPEC order, then other columns in first-seen order
    present_spec = [c for c in SPEC_COLUMNS if c in seen_cols]
    others = [c for c in seen_cols if c not in SPEC_COLUMNS]
    input_columns = present_spec + others

    con = duckdb.connect(config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })
    con.execute("SET TimeZone = 'UTC'")  # naive timestamps and INT96 are UTC
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    if args.memory_limit:
        con.execute(f"SET memory_limit = {lit(args.memory_limit)}")
    con.execute("SET preserve_insertion_order = false")

    # ---- 1. one scan: canonical types, partition date, reject reason
    file_list = "[" + ", ".join(lit(str(f)) for f in files) + "]"
    select = []
    for c in SPEC_COLUMNS:
        if c == "event_time":
            expr = "CAST(event_time AS TIMESTAMPTZ)"
        elif c == "revenue":
            expr = "CAST(revenue AS DOUBLE)" if c in seen_cols else "CAST(NULL AS DOUBLE)"
        else:
            expr = f"CAST({q(c)} AS VARCHAR)" if c in seen_cols else "CAST(NULL AS VARCHAR)"
        select.append(f"{expr} AS {q(c)}")
    select += [q(c) for c in others]
    part_re = r"event_date=(\d{4}-\d{2}-\d{2})"
    try:
        con.execute(f"""
            CREATE TEMP TABLE raw AS
            SELECT *,
                   CASE WHEN event_id IS NULL OR event_id = '' THEN 'missing_event_id'
                        WHEN event_type IS NULL OR event_type = '' THEN 'missing_event_type'
                        WHEN event_time IS NULL THEN 'missing_event_time'
                   END AS __reject_reason
            FROM (
                SELECT {", ".join(select)},
                       CAST(regexp_extract(__file, {lit(part_re)}, 1) AS DATE) AS __part
                FROM read_parquet({file_list}, union_by_name = true, filename = '__file',
                                  hive_partitioning = false)
            )""")
    except duckdb.Error as e:
        raise Fail(EXIT_DATA, f"reading input: {e}")
    rows_read = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    t_scan = time.perf_counter()

    # ---- 2+5. valid rows, dedup, classification
    # The team's documented tie rule (README, docs/contract-notes.md): the
    # other SPEC columns in SPEC order, NULLs last, then the matched rule's
    # position and value.
    rule_pos = "CASE " + " ".join(
        f"WHEN ({r['when']}) THEN {i + 1}" for i, r in enumerate(rules)) + " END" if rules else "NULL"
    conv_name = "CASE " + " ".join(
        f"WHEN ({r['when']}) THEN {lit(r['name'])}" for r in rules) + " END" if rules else "NULL"
    conv_kind = "CASE " + " ".join(
        f"WHEN ({r['when']}) THEN {lit(r['kind'])}" for r in rules) + " END" if rules else "NULL"
    conv_value = "CASE " + " ".join(
        f"WHEN ({r['when']}) THEN coalesce(CAST(({r['value']}) AS DOUBLE), 0)"
        if r.get("value") not in (None, "") else f"WHEN ({r['when']}) THEN CAST(0 AS DOUBLE)"
        for r in rules) + " END" if rules else "NULL"
    tiebreak = ", ".join(
        [f"{q(c)} ASC NULLS LAST" for c in SPEC_COLUMNS if c not in ("event_id", "event_time")]
        + [f"({rule_pos}) ASC NULLS LAST", f"({conv_value}) ASC NULLS LAST"])
    try:
        con.execute(f"""
            CREATE TEMP TABLE surv AS
            WITH valid AS (SELECT * FROM raw WHERE __reject_reason IS NULL),
            -- only ids delivered more than once need the (sorting) window
            dup_ids AS (SELECT event_id FROM valid GROUP BY event_id HAVING count(*) > 1),
            deduped AS (
                SELECT * FROM valid ANTI JOIN dup_ids USING (event_id)
                UNION ALL BY NAME
                SELECT * FROM (SELECT * FROM valid SEMI JOIN dup_ids USING (event_id))
                QUALIFY row_number() OVER (
                    PARTITION BY event_id ORDER BY event_time, __part, {tiebreak}) = 1
            )
            SELECT *,
                   coalesce(user_id, anonymous_id) AS __ukey,
                   (utm_source IS NOT NULL AND utm_source <> '') AS __touch,
                   {conv_name} AS __conv_name,
                   {conv_kind} AS __kind,
                   {conv_value} AS __value
            FROM deduped
        """)
    except duckdb.Error as e:
        names = ", ".join(r["name"] for r in rules)
        raise Fail(EXIT_ARGS, f"rules ({names}) do not evaluate on the input: {e}")
    survivors = con.execute("SELECT count(*) FROM surv").fetchone()[0]
    t_dedup = time.perf_counter()

    # ---- 3+4. attribution of the events of D; 6. assisted hard conversions
    D = f"DATE {lit(day.isoformat())}"
    window = f"to_days({int(lookback)})"

    def nz(expr: str) -> str:
        return f"CASE WHEN {expr} IS NULL OR {expr} = '' THEN '(not set)' ELSE {expr} END"

    direct = {"utm_source": "'(direct)'", "utm_medium": "'(none)'"}
    if args.attribution == "last_touch":
        con.execute("""
            CREATE TEMP TABLE touches AS
            SELECT __ukey, event_time, unnest(dims)
            FROM (
                -- one struct: per-column max_by would skip NULL values and
                -- mix the dimensions of different touches
                SELECT __ukey, event_time,
                       max_by({'utm_source': utm_source, 'utm_medium': utm_medium,
                               'utm_campaign': utm_campaign, 'utm_content': utm_content,
                               'utm_term': utm_term}, event_id) AS dims
                FROM surv
                WHERE __touch AND __ukey IS NOT NULL
                GROUP BY __ukey, event_time
            )
        """)
        touch_join = ("ASOF LEFT JOIN touches t "
                      "ON e.__ukey = t.__ukey AND e.event_time >= t.event_time")
        in_window = f"(t.event_time IS NOT NULL AND t.event_time >= e.event_time - {window})"
    else:
        touch_join = ""
    dims = []
    for c in UTM:
        fallback = direct.get(c, "'(not set)'")
        from_touch = f"WHEN {in_window} THEN {nz('t.' + c)} " if touch_join else ""
        dims.append(
            f"CASE WHEN e.__touch THEN {nz('e.' + c)} {from_touch}"
            f"ELSE {fallback} END AS {c}")
    for c in ("device_type", "country"):
        dims.append(f"{nz('e.' + c)} AS {c}")
    con.execute("""
        CREATE TEMP TABLE softs AS
        SELECT __ukey, event_time FROM surv WHERE __kind = 'soft' AND __ukey IS NOT NULL
    """)
    con.execute(f"""
        CREATE TEMP TABLE fact AS
        SELECT {", ".join(dims)},
               e.__ukey, e.__conv_name, e.__kind, e.__value,
               (e.__kind = 'hard' AND s.event_time IS NOT NULL
                AND s.event_time >= e.event_time - {window}) AS __assisted
        FROM (SELECT * FROM surv WHERE __part = {D}) e
        {touch_join}
        ASOF LEFT JOIN softs s ON e.__ukey = s.__ukey AND e.event_time > s.event_time
    """)
    events_d = con.execute("SELECT count(*) FROM fact").fetchone()[0]
    t_attr = time.perf_counter()

    # ---- 7. aggregates and outputs
    metrics = """
        CAST(count(*) AS BIGINT) AS events,
        CAST(count(DISTINCT __ukey) AS BIGINT) AS users,
        CAST(count(*) FILTER (WHERE __kind = 'hard') AS BIGINT) AS hard_conversions,
        CAST(count(*) FILTER (WHERE __kind = 'soft') AS BIGINT) AS soft_conversions,
        CAST(count(DISTINCT __ukey) FILTER (WHERE __kind = 'hard') AS BIGINT) AS hard_converters,
        CAST(count(DISTINCT __ukey) FILTER (WHERE __kind = 'soft') AS BIGINT) AS soft_converters,
        CAST(coalesce(sum(__value) FILTER (WHERE __kind = 'hard'), 0) AS DOUBLE) AS hard_value,
        CAST(coalesce(sum(__value) FILTER (WHERE __kind = 'soft'), 0) AS DOUBLE) AS soft_value,
        CAST(count(*) FILTER (WHERE __assisted) AS BIGINT) AS assisted_hard_conversions"""
    rates = """
        CASE WHEN users = 0 THEN NULL ELSE CAST(hard_converters AS DOUBLE) / users END
            AS hard_conversion_rate,
        CASE WHEN users = 0 THEN NULL ELSE CAST(soft_converters AS DOUBLE) / users END
            AS soft_conversion_rate"""
    metric_cols = ("events, users, hard_conversions, soft_conversions, hard_converters, "
                   "soft_converters, hard_value, soft_value, assisted_hard_conversions")
    grain = ", ".join(GRAIN)
    dim_case = "CASE " + " ".join(
        f"WHEN grouping({c}) = 0 THEN {lit(c)}" for c in DIMENSIONS) + " END"
    dim_value = "CASE " + " ".join(
        f"WHEN grouping({c}) = 0 THEN {c}" for c in DIMENSIONS) + " END"
    dim_rank = "CASE dimension " + " ".join(
        f"WHEN {lit(c)} THEN {i}" for i, c in enumerate(("total",) + DIMENSIONS)) + " END"
    spec_then_others = ", ".join(q(c) for c in input_columns)

    queries = {
        "campaign_daily": f"""
            SELECT {grain}, {metric_cols}, {rates}
            FROM (SELECT {grain}, {metrics} FROM fact GROUP BY {grain})
            ORDER BY {grain}""",
        "dimension_summary": f"""
            SELECT dimension, dimension_value, {metric_cols}, {rates}
            FROM (
                SELECT 'total' AS dimension, '(all)' AS dimension_value, {metrics} FROM fact
                UNION ALL
                SELECT {dim_case} AS dimension, {dim_value} AS dimension_value, {metrics}
                FROM fact
                GROUP BY GROUPING SETS ({", ".join(f"({c})" for c in DIMENSIONS)})
            )
            ORDER BY {dim_rank}, dimension_value""",
        "conversions_by_name": """
            SELECT __conv_name AS conversion_name, __kind AS kind,
                   utm_source, utm_medium, utm_campaign,
                   CAST(count(*) AS BIGINT) AS conversions,
                   CAST(count(DISTINCT __ukey) AS BIGINT) AS converters,
                   CAST(coalesce(sum(__value), 0) AS DOUBLE) AS value
            FROM fact
            WHERE __conv_name IS NOT NULL
            GROUP BY ALL
            ORDER BY conversion_name, kind, utm_source, utm_medium, utm_campaign""",
        "rejected_events": f"""
            SELECT {spec_then_others}, __reject_reason AS reject_reason
            FROM raw
            WHERE __reject_reason IS NOT NULL AND __part = {D}
            ORDER BY event_id""",
    }
    counts = {}
    for table, sql in queries.items():
        part = output_dir / table / f"event_date={day.isoformat()}"
        if part.exists():
            shutil.rmtree(part)
        part.mkdir(parents=True)
        target = part / "part-ref.parquet"
        con.execute(f"COPY ({sql}) TO {lit(str(target))} (FORMAT parquet, COMPRESSION zstd)")
        counts[table] = pq.ParquetFile(target).metadata.num_rows
    t_end = time.perf_counter()

    stats = {
        "files": len(files), "rows_read": rows_read, "survivors": survivors,
        "events_of_d": events_d, "tables": counts,
        "seconds": {
            "scan": round(t_scan - t_start, 3), "dedup_classify": round(t_dedup - t_scan, 3),
            "attribute": round(t_attr - t_dedup, 3), "aggregate_write": round(t_end - t_attr, 3),
            "total": round(t_end - t_start, 3),
        },
    }
    log(f"{day}: {stats}")
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="local input dir (Hive partitions event_date=...)")
    ap.add_argument("--output", required=True, help="local output dir")
    ap.add_argument("--date", required=True, help="report date YYYY-MM-DD")
    ap.add_argument("--lookback-days", type=int, default=30)
    ap.add_argument("--attribution", choices=("last_touch", "event"), default="last_touch")
    ap.add_argument("--rules", help="rules TOML (default: SPEC's six rules)")
    ap.add_argument("--threads", type=int, help="DuckDB threads (default: all cores)")
    ap.add_argument("--memory-limit", help="DuckDB memory_limit, e.g. 2GB")
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
