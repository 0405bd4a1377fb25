"""Failure behaviour (SPEC section 6, issue 3): bad input, bad arguments and
rules, storage faults against a real SeaweedFS, SIGKILL at many moments of a
re-run, two concurrent runs, secrets, quarantine.

Every expectation comes from SPEC.md and the README ("Exit codes and failure
modes", "Semantics where SPEC leaves room"), never from the program's output:

- exit codes 0 / 2 / 3 / 65 / 75; one `error: ...` line naming the argument,
  rule, file or column;
- a failure leaves the previous output of the date exactly as it was (here:
  byte for byte, every file under the output root, for failures detected
  before anything is committed);
- the manifest `<out>/_runs/event_date=D.json` is the commit point: a reader
  that follows it (reads exactly the files it lists) always sees one complete
  run, whatever moment the job was killed at;
- after a successful run each table partition holds exactly the files its
  manifest lists.

Tests that stop or kill the S3 server use their own SeaweedFS instance
(`own_s3`), restarted on the same data directory and ports; the shared
session server (`s3`) is only used by tests that leave it running.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import s3server
from conftest import convmart_bin, manifest, read_table, run_convmart, table_files
from s3server import S3Server, s3  # noqa: F401  (session fixture: SeaweedFS on loopback)
from tablediff import diff_tables

TABLES = ("campaign_daily", "dimension_summary", "conversions_by_name", "rejected_events")
SUMMARY_TABLES = ("campaign_daily", "dimension_summary", "conversions_by_name")
REASONS = ("missing_event_id", "missing_event_type", "missing_event_time")

# the small generated data set most tests start from
START = "2024-05-01"
DAYS = 3
D = "2024-05-03"
D_PREV = "2024-05-02"
LOOKBACK = 2
EVENTS_PER_DAY = 300
SEED = 11

# bigger inputs, for runs that must last long enough to be interrupted
BIG_EVENTS_PER_DAY = 4000

EXIT_OK, EXIT_ARGS, EXIT_NO_INPUT, EXIT_DATA, EXIT_TEMP = 0, 2, 3, 65, 75


# ---------------------------------------------------------------- helpers
def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line of stderr (the contract: one line)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, (f"expected exactly one 'error:' line on stderr, got {len(lines)}\n"
                             f"--- stderr ---\n{proc.stderr[-3000:]}")
    return lines[0]


def assert_fails(proc: subprocess.CompletedProcess, code: int, *names: str) -> str:
    """Exit `code` with one error line containing every one of `names`."""
    assert proc.returncode == code, (
        f"exit {proc.returncode}, expected {code}\n--- stdout ---\n{proc.stdout[-1500:]}"
        f"\n--- stderr ---\n{proc.stderr[-3000:]}")
    line = error_line(proc)
    for n in names:
        assert n in line, f"the error line does not name {n!r}: {line}"
    return line


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (f"exit {proc.returncode}, expected 0\n"
                                  f"--- stderr ---\n{proc.stderr[-3000:]}")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (its bytes), by relative path. Directories are not
    compared: an empty directory is nothing a reader or the next run sees."""
    root = Path(root)
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_unchanged(before: dict, after: dict, what: str = "output") -> None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), (
        f"{what} changed by a failed run (nothing may be written):\n"
        f"  added:   {added}\n  removed: {removed}\n  changed: {changed}")


def generate(out: Path, start: str = START, days: int = DAYS,
             events_per_day: int = EVENTS_PER_DAY, seed: int = SEED) -> Path:
    proc = run_convmart("generate", "--output", out, "--start-date", start, "--days", days,
                        "--events-per-day", events_per_day, "--seed", seed)
    assert_ok(proc)
    return out


def run_job(inp, out, *extra, date_: str = D, lookback: int = LOOKBACK, env=None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return run_convmart("run", "--input", inp, "--output", out, "--date", date_,
                        "--lookback-days", lookback, *extra, env=env, timeout=timeout)


def committed(out: Path, date_: str = D) -> tuple[dict, dict[str, pa.Table]]:
    """What a manifest-following reader sees: the manifest, and each table read
    from exactly the files it lists (they must all exist and be readable)."""
    m = manifest(out, date_)
    tables = {}
    for t in TABLES:
        assert t in m["tables"], f"manifest of {date_} has no table {t}: {sorted(m['tables'])}"
        parts = []
        for f in m["tables"][t]["files"]:
            p = Path(out) / f["path"]
            assert p.is_file(), f"manifest lists {f['path']} but it does not exist"
            parts.append(pq.read_table(p))
        assert parts, f"manifest lists no file for {t}"
        tbl = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        assert tbl.num_rows == m["tables"][t]["rows"], (
            f"{t}: manifest says {m['tables'][t]['rows']} rows, its files hold {tbl.num_rows}")
        tables[t] = tbl
    return m, tables


def assert_same_tables(got: dict[str, pa.Table], ref: dict[str, pa.Table], what: str) -> None:
    problems = []
    for t in TABLES:
        d = diff_tables(got[t], ref[t], names=(what, "first good run"))
        if d:
            problems.append(f"== {t} ==\n{d}")
    assert not problems, f"{what}: tables differ from the first good run\n" + "\n".join(problems)


def assert_exactly_manifest_files(out: Path, date_: str = D) -> dict:
    """After a successful run: each table partition holds exactly the manifest's
    files, and no staging leftovers of the date remain."""
    m = manifest(out, date_)
    for t in TABLES:
        listed = sorted(f["path"] for f in m["tables"][t]["files"])
        part = Path(out) / t / f"event_date={date_}"
        present = sorted(p.relative_to(out).as_posix() for p in part.rglob("*") if p.is_file()) \
            if part.is_dir() else []
        assert present == listed, (f"{t}/event_date={date_} holds {present}, "
                                   f"the manifest lists {listed}")
    staging = Path(out) / "_staging"
    leftovers = [p.relative_to(out).as_posix() for p in staging.rglob("*")
                 if p.is_file() and f"event_date={date_}" in p.as_posix()] \
        if staging.is_dir() else []
    assert not leftovers, f"staging leftovers of {date_}: {leftovers}"
    staged_dir = staging / f"event_date={date_}"
    assert not (staged_dir.is_dir() and any(staged_dir.iterdir())), \
        f"{staged_dir} is not empty: {list(staged_dir.rglob('*'))}"
    return m


def d_file(inp: Path, name: str = "part-00000.parquet", date_: str = D) -> Path:
    return Path(inp) / f"event_date={date_}" / name


def tail2(path) -> str:
    """`event_date=D/name` of an input file path (manifest paths may be absolute URLs)."""
    return "/".join(str(path).rstrip("/").split("/")[-2:])


def rows_in(files) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


# ---------------------------------------------------------------- base data
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Generated input (3 days) and a good run of D into `out`: the state every
    bad-input test starts from (each test works on its own copy)."""
    root = tmp_path_factory.mktemp("failures_base")
    inp = generate(root / "input")
    out = root / "out"
    assert_ok(run_job(inp, out))
    return {"input": inp, "out": out, "snapshot": snapshot(out)}


@pytest.fixture
def work(base, tmp_path):
    """Fresh copies of the base input and of the output of the good run."""
    inp, out = tmp_path / "input", tmp_path / "out"
    shutil.copytree(base["input"], inp)
    shutil.copytree(base["out"], out)
    assert snapshot(out) == base["snapshot"]
    return {"input": inp, "out": out, "before": base["snapshot"]}


def run_expect_failure(work, code, *names, extra=(), date_=D, lookback=LOOKBACK):
    proc = run_job(work["input"], work["out"], *extra, date_=date_, lookback=lookback)
    line = assert_fails(proc, code, *names)
    assert_unchanged(work["before"], snapshot(work["out"]))
    return line


# ====================================================== bad input: data errors
@pytest.mark.parametrize("where", [D, D_PREV], ids=["report_date", "lookback_partition"])
def test_truncated_parquet_file_is_a_data_error(work, where):
    f = d_file(work["input"], date_=where)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    run_expect_failure(work, EXIT_DATA, f.name)


def test_zero_byte_parquet_file_is_a_data_error(work):
    f = d_file(work["input"], "empty-upload.parquet")
    f.write_bytes(b"")
    run_expect_failure(work, EXIT_DATA, f.name)


def test_corrupt_pages_with_a_valid_footer_is_a_data_error(work):
    """The footer parses (the file lists fine) but the column data is garbage:
    the failure comes while reading, and must still be 65 naming the file."""
    f = d_file(work["input"], "part-00001.parquet")
    data = bytearray(f.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    data_end = len(data) - 8 - footer_len
    for i in range(4, data_end):          # every page header and page, not the footer
        data[i] = 0xA5
    f.write_bytes(bytes(data))
    pq.ParquetFile(f)                      # the footer is still valid
    run_expect_failure(work, EXIT_DATA, f.name)


def test_non_parquet_content_in_a_parquet_file_is_a_data_error(work):
    f = d_file(work["input"], "export.parquet")
    f.write_text("event_id,event_time,event_type\ne1,2024-05-03T10:00:00Z,purchase\n")
    run_expect_failure(work, EXIT_DATA, f.name)


def test_other_files_in_a_partition_are_ignored(work):
    """README: only *.parquet files are input; `_SUCCESS`, `.crc`, `_x.parquet`,
    `.x.parquet` and other names are ignored (so garbage in them is harmless)."""
    part = work["input"] / f"event_date={D}"
    for name in ("_SUCCESS", ".part-00000.parquet.crc", "_tmp.parquet", ".hidden.parquet",
                 "notes.txt", "part-00000.parquet.bak"):
        (part / name).write_bytes(b"not parquet at all")
    ref_files = sorted(p.name for p in part.glob("part-0000?.parquet"))
    assert_ok(run_job(work["input"], work["out"]))
    m = assert_exactly_manifest_files(work["out"])
    read = sorted(Path(f["path"]).name for f in m["input_files"]
                  if f"event_date={D}" in f["path"])
    assert read == ref_files


@pytest.mark.parametrize("where", [D, D_PREV], ids=["report_date", "lookback_partition"])
@pytest.mark.parametrize("column", ["event_id", "event_type", "event_time"])
def test_file_missing_a_required_column_is_a_data_error(work, column, where):
    src = d_file(work["input"], date_=where)
    t = pq.read_table(src)
    bad = d_file(work["input"], "part-00009.parquet", date_=where)
    pq.write_table(t.drop_columns([column]), bad)
    run_expect_failure(work, EXIT_DATA, bad.name, column)


@pytest.mark.parametrize("column", ["event_time", "revenue"])
def test_column_of_the_wrong_type_is_a_data_error(work, column):
    f = d_file(work["input"], "part-00000.parquet")
    t = pq.read_table(f)
    i = t.schema.get_field_index(column)
    t = t.set_column(i, pa.field(column, pa.string()), t.column(i).cast(pa.string()))
    bad = d_file(work["input"], "part-00009.parquet")
    pq.write_table(t, bad)
    run_expect_failure(work, EXIT_DATA, bad.name, column)


def test_range_failing_on_a_later_date_keeps_the_earlier_dates_committed(work):
    """README: in a range, dates before the failing one stay committed; the
    failing date keeps its previous output."""
    f = d_file(work["input"])
    f.write_bytes(f.read_bytes()[:1000])
    proc = run_job(work["input"], work["out"], "--end-date", D, date_=D_PREV)
    assert_fails(proc, EXIT_DATA, f.name)
    assert_exactly_manifest_files(work["out"], D_PREV)
    of_d = lambda snap: {k: v for k, v in snap.items() if f"event_date={D}" in k}  # noqa: E731
    assert_unchanged(of_d(work["before"]), of_d(snapshot(work["out"])), f"output of {D}")


# ====================================================== partitions
def test_partition_directory_without_files_is_exit_3(work):
    part = work["input"] / f"event_date={D}"
    shutil.rmtree(part)
    part.mkdir()
    run_expect_failure(work, EXIT_NO_INPUT, D)


def test_partition_with_only_a_success_marker_is_exit_3(work):
    part = work["input"] / f"event_date={D}"
    shutil.rmtree(part)
    part.mkdir()
    (part / "_SUCCESS").write_bytes(b"")
    run_expect_failure(work, EXIT_NO_INPUT, D)


def test_missing_partition_is_exit_3(work):
    shutil.rmtree(work["input"] / f"event_date={D}")
    run_expect_failure(work, EXIT_NO_INPUT, D)


def test_missing_partition_of_a_date_never_run_writes_nothing(base, tmp_path):
    out = tmp_path / "fresh_out"
    proc = run_job(base["input"], out, date_="2024-05-09")
    assert_fails(proc, EXIT_NO_INPUT, "2024-05-09")
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not files, f"a run that found no input wrote {files}"


def test_partition_with_a_zero_row_file_succeeds_with_empty_tables(work):
    """D holds one valid Parquet file with 0 rows: not a failure; the tables are
    empty but present, dimension_summary has its total row with zeros and
    null rates (README), and the manifest says so."""
    part = work["input"] / f"event_date={D}"
    schema = pq.read_schema(part / "part-00000.parquet")
    shutil.rmtree(part)
    part.mkdir()
    pq.write_table(schema.empty_table(), part / "part-00000.parquet")
    assert_ok(run_job(work["input"], work["out"]))
    m = assert_exactly_manifest_files(work["out"])
    m, tables = committed(work["out"])
    assert {t: m["tables"][t]["rows"] for t in TABLES} == {
        "campaign_daily": 0, "dimension_summary": 1, "conversions_by_name": 0,
        "rejected_events": 0}
    assert m["rejected_rows"] == {r: 0 for r in REASONS}
    d_inputs = [f for f in m["input_files"] if f"event_date={D}" in f["path"]]
    assert [(Path(f["path"]).name, f["rows"]) for f in d_inputs] == [("part-00000.parquet", 0)]
    assert tables["dimension_summary"].to_pylist() == [{
        "dimension": "total", "dimension_value": "(all)", "events": 0, "users": 0,
        "hard_conversions": 0, "soft_conversions": 0, "hard_converters": 0,
        "soft_converters": 0, "hard_value": 0.0, "soft_value": 0.0,
        "assisted_hard_conversions": 0, "hard_conversion_rate": None,
        "soft_conversion_rate": None}]
    for t in ("campaign_daily", "conversions_by_name"):
        assert read_table(work["out"], t, D) == []


# ====================================================== rules
GOOD_RULE = '''
[[conversion]]
name = "purchase_ok"
kind = "hard"
when = "event_type = 'purchase'"
value = "revenue"
'''

BAD_RULES = {
    # case: (rule text appended after a good rule, name the error must carry)
    "sql_syntax": ('''
[[conversion]]
name = "broken_syntax"
kind = "soft"
when = "event_type = = 'social_like' AND ("
''', "broken_syntax"),
    "unknown_column": ('''
[[conversion]]
name = "ghost_column"
kind = "soft"
when = "no_such_column = 'x'"
''', "ghost_column"),
    "non_boolean_when": ('''
[[conversion]]
name = "not_a_predicate"
kind = "hard"
when = "revenue + 1"
''', "not_a_predicate"),
    "string_when": ('''
[[conversion]]
name = "string_predicate"
kind = "hard"
when = "event_type"
''', "string_predicate"),
    "semicolon": ('''
[[conversion]]
name = "semi_colon"
kind = "hard"
when = "event_type = 'purchase';"
''', "semi_colon"),
    "second_statement": ('''
[[conversion]]
name = "two_statements"
kind = "hard"
when = "event_type = 'purchase'; DROP TABLE events"
''', "two_statements"),
    "select_statement": ('''
[[conversion]]
name = "select_stmt"
kind = "hard"
when = "event_type = 'purchase') OR (SELECT true"
''', "select_stmt"),
    "sub_query": ('''
[[conversion]]
name = "sub_query"
kind = "hard"
when = "event_id IN (SELECT event_id FROM events)"
''', "sub_query"),
    "duplicate_name": ('''
[[conversion]]
name = "purchase_ok"
kind = "soft"
when = "event_type = 'social_like'"
''', "purchase_ok"),
    "unknown_kind": ('''
[[conversion]]
name = "medium_kind"
kind = "medium"
when = "event_type = 'social_like'"
''', "medium_kind"),
    "bad_name": ('''
[[conversion]]
name = "Bad-Name"
kind = "soft"
when = "event_type = 'social_like'"
''', "Bad-Name"),
    "missing_when": ('''
[[conversion]]
name = "no_when"
kind = "soft"
''', "no_when"),
    "non_numeric_value": ('''
[[conversion]]
name = "text_value"
kind = "hard"
when = "event_type = 'purchase'"
value = "event_type"
''', "text_value"),
}


def write_rules(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "my_rules.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_bad_rule_is_exit_2_naming_the_rule_in_run_and_validate(work, tmp_path, case):
    text, name = BAD_RULES[case]
    rules = write_rules(tmp_path, GOOD_RULE + text)
    run_expect_failure(work, EXIT_ARGS, name, extra=("--rules", rules))
    v = run_convmart("validate", "--rules", rules, "--input", work["input"], "--date", D,
                     "--lookback-days", LOOKBACK)
    assert_fails(v, EXIT_ARGS, name)


def test_rule_file_that_is_not_toml_is_exit_2_naming_the_file(work, tmp_path):
    rules = write_rules(tmp_path, GOOD_RULE + '\n[[conversion]\nname = "x"\n')
    run_expect_failure(work, EXIT_ARGS, rules.name, extra=("--rules", rules))
    assert_fails(run_convmart("validate", "--rules", rules), EXIT_ARGS, rules.name)


def test_missing_rule_file_is_exit_2_naming_it(work, tmp_path):
    rules = tmp_path / "does_not_exist.toml"
    run_expect_failure(work, EXIT_ARGS, rules.name, extra=("--rules", rules))


def test_good_rule_file_validates(work, tmp_path):
    """Control for the cases above: the good rule alone is accepted."""
    rules = write_rules(tmp_path, GOOD_RULE)
    v = run_convmart("validate", "--rules", rules, "--input", work["input"], "--date", D,
                     "--lookback-days", LOOKBACK)
    assert_ok(v)


# ====================================================== arguments
@pytest.mark.parametrize("bad", ["2024-02-30", "2024-13-01", "2024-05-32", "03/05/2024",
                                 "yesterday", ""])
def test_invalid_date_is_exit_2_naming_the_argument(work, bad):
    proc = run_convmart("run", "--input", work["input"], "--output", work["out"],
                        "--date", bad, "--lookback-days", LOOKBACK)
    assert_fails(proc, EXIT_ARGS, "--date")
    assert_unchanged(work["before"], snapshot(work["out"]))


def test_invalid_end_date_is_exit_2_naming_the_argument(work):
    run_expect_failure(work, EXIT_ARGS, "--end-date", extra=("--end-date", "2024-04-31"))


def test_end_date_before_date_is_exit_2(work):
    run_expect_failure(work, EXIT_ARGS, "--end-date", extra=("--end-date", D_PREV))


@pytest.mark.parametrize("bad", ["99999", "-1", "ten"])
def test_unreasonable_lookback_is_exit_2(work, bad):
    proc = run_convmart("run", "--input", work["input"], "--output", work["out"],
                        "--date", D, f"--lookback-days={bad}")
    assert_fails(proc, EXIT_ARGS, "--lookback-days")
    assert_unchanged(work["before"], snapshot(work["out"]))


def test_lookback_0_reads_only_the_report_date(work):
    assert_ok(run_job(work["input"], work["out"], lookback=0))
    m = assert_exactly_manifest_files(work["out"])
    d_files = sorted((work["input"] / f"event_date={D}").glob("*.parquet"))
    assert sorted(tail2(f["path"]) for f in m["input_files"]) == [tail2(p) for p in d_files]
    assert m["rows_read"] == rows_in(d_files)
    assert m["lookback_days"] == 0


def test_lookback_3000_reads_only_existing_partitions(work, tmp_path):
    """3000 days before D is 2016: the job must read the three partitions that
    exist (not fail on the thousands that do not), and since every event lies
    within 10 days of D the tables equal those of a 10-day lookback."""
    assert_ok(run_job(work["input"], work["out"], lookback=3000))
    m = assert_exactly_manifest_files(work["out"])
    all_files = sorted(work["input"].glob("event_date=*/*.parquet"))
    assert sorted(tail2(f["path"]) for f in m["input_files"]) == [tail2(p) for p in all_files]
    assert m["rows_read"] == rows_in(all_files)
    _, big = committed(work["out"])
    out10 = tmp_path / "out10"
    assert_ok(run_job(work["input"], out10, lookback=10))
    _, ten = committed(out10)
    assert_same_tables(big, ten, "lookback 3000 vs 10")


def test_help_documents_the_exit_codes():
    for args in (["--help"], ["run", "--help"]):
        proc = run_convmart(*args)
        assert_ok(proc)
        for code in ("0", "2", "3", "65", "75"):
            assert any(ln.strip().startswith(code + " ") for ln in proc.stdout.splitlines()), \
                f"`convmart {' '.join(args)}` does not document exit code {code}"


# ====================================================== quarantine
Q_D, Q_PREV = "2024-06-10", "2024-06-09"
Q_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("event_time", pa.timestamp("us", tz="UTC")),
    ("event_type", pa.string()), ("user_id", pa.string()), ("anonymous_id", pa.string()),
    ("utm_source", pa.string()), ("utm_medium", pa.string()), ("utm_campaign", pa.string()),
    ("utm_content", pa.string()), ("utm_term", pa.string()), ("device_type", pa.string()),
    ("country", pa.string()), ("revenue", pa.float64()), ("row_tag", pa.string()),
])


def _ev(tag, event_id, event_type, t, user="u0", src="rej_src", revenue=1.5):
    return {"event_id": event_id, "event_time": t, "event_type": event_type, "user_id": user,
            "anonymous_id": None, "utm_source": src, "utm_medium": "cpc", "utm_campaign": "c1",
            "utm_content": None, "utm_term": None, "device_type": "mobile", "country": "DE",
            "revenue": revenue, "row_tag": tag}


T0 = datetime(2024, 6, 10, 12, 0, tzinfo=timezone.utc)
# rejected rows of D and their reason (SPEC 3.1: first that applies, in the
# order event_id, event_type, event_time; empty strings count as missing)
Q_REJECTED = {
    "r1": ("missing_event_id", _ev("r1", None, "purchase", T0)),
    "r2": ("missing_event_id", _ev("r2", "", "purchase", T0)),
    "r3": ("missing_event_type", _ev("r3", "e-r3", None, T0)),
    "r4": ("missing_event_type", _ev("r4", "e-r4", "", T0)),
    "r5": ("missing_event_time", _ev("r5", "e-r5", "purchase", None)),
    "r6": ("missing_event_id", _ev("r6", None, None, None)),
    "r7": ("missing_event_type", _ev("r7", "e-r7", "", None)),
}
Q_VALID = [_ev(f"v{i}", f"e-v{i}", "purchase" if i == 1 else "page_view",
               T0 + timedelta(minutes=i), user=f"u{i}", src="google", revenue=10.0)
           for i in range(1, 8)]
# D: 14 rows, 7 rejected -> ratio 0.5. D-1: 4 rows, 1 rejected (not counted for D).
Q_PREV_ROWS = [_ev("p-rej", None, "page_view", T0 - timedelta(days=1))] + [
    _ev(f"p{i}", f"e-p{i}", "page_view", T0 - timedelta(days=1), user=f"u{i}", src="bing")
    for i in range(1, 4)]


@pytest.fixture
def quarantine_input(tmp_path):
    inp = tmp_path / "q_input"
    for d, rows in ((Q_D, Q_VALID + [r for _, r in Q_REJECTED.values()]),
                    (Q_PREV, Q_PREV_ROWS)):
        (inp / f"event_date={d}").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=Q_SCHEMA),
                       inp / f"event_date={d}" / "part-00000.parquet")
    return inp


def test_rejected_rows_land_in_rejected_events_with_their_reason(quarantine_input, tmp_path):
    out = tmp_path / "out"
    assert_ok(run_job(quarantine_input, out, date_=Q_D, lookback=1))
    assert_exactly_manifest_files(out, Q_D)
    m, tables = committed(out, Q_D)
    rej = tables["rejected_events"]
    spec_cols = [f.name for f in Q_SCHEMA][:-1]
    assert rej.schema.names == spec_cols + ["row_tag", "reject_reason"], rej.schema.names
    got = {r["row_tag"]: r for r in rej.to_pylist()}
    # only partition D's rejected rows, each once, with its reason
    assert sorted(got) == sorted(Q_REJECTED)
    for tag, (reason, row) in Q_REJECTED.items():
        assert got[tag]["reject_reason"] == reason, (tag, got[tag])
        for c in ("event_id", "event_type", "utm_source", "revenue", "country"):
            assert got[tag][c] == row[c], (tag, c, got[tag][c], row[c])
    assert m["rejected_rows"] == {"missing_event_id": 3, "missing_event_type": 3,
                                  "missing_event_time": 1}
    assert m["rows_read"] == 18
    # rejected rows take part in nothing else: 7 valid events of D, 7 users
    total = [r for r in tables["dimension_summary"].to_pylist() if r["dimension"] == "total"]
    assert len(total) == 1 and total[0]["events"] == 7 and total[0]["users"] == 7, total
    assert total[0]["hard_conversions"] == 1 and total[0]["hard_value"] == 10.0, total


@pytest.mark.parametrize("ratio", ["0.45", "0"])
def test_max_rejected_ratio_exceeded_is_65_and_writes_nothing(quarantine_input, tmp_path, ratio):
    """D has 7 of 14 rows rejected (0.5). 0.45 is exceeded by D's own ratio
    (the whole window's 8/18 = 0.44 would not be: the limit is about D)."""
    out = tmp_path / "out"
    assert_ok(run_job(quarantine_input, out, date_=Q_D, lookback=1))
    before = snapshot(out)
    proc = run_job(quarantine_input, out, "--max-rejected-ratio", ratio, date_=Q_D, lookback=1)
    line = assert_fails(proc, EXIT_DATA)
    assert "reject" in line, line
    assert_unchanged(before, snapshot(out))
    fresh = tmp_path / "fresh"
    proc = run_job(quarantine_input, fresh, "--max-rejected-ratio", ratio, date_=Q_D, lookback=1)
    assert_fails(proc, EXIT_DATA)
    files = [p for p in fresh.rglob("*") if p.is_file()] if fresh.exists() else []
    assert not files, f"a run over the rejected-rows limit wrote {files}"


@pytest.mark.parametrize("ratio", ["0.5", "0.51", "1"])
def test_max_rejected_ratio_not_exceeded_succeeds(quarantine_input, tmp_path, ratio):
    """0.5 is not *more than* 0.5: the run succeeds."""
    out = tmp_path / "out"
    assert_ok(run_job(quarantine_input, out, "--max-rejected-ratio", ratio, date_=Q_D,
                      lookback=1))
    m = assert_exactly_manifest_files(out, Q_D)
    assert sum(m["rejected_rows"].values()) == 7


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "abc", "NaN"])
def test_invalid_max_rejected_ratio_is_exit_2(work, bad):
    run_expect_failure(work, EXIT_ARGS, "--max-rejected-ratio",
                       extra=(f"--max-rejected-ratio={bad}",))


# ====================================================== background runs
class Job:
    """convmart started in the background; a thread collects stderr lines so a
    test can act when a given log line appears."""

    def __init__(self, *args, env: dict | None = None):
        full_env = dict(os.environ)
        full_env.setdefault("RUST_BACKTRACE", "0")
        full_env.update(env or {})
        self.args = [str(convmart_bin()), *map(str, args)]
        self.lines: list[str] = []
        self.stdout = ""
        self._eof = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=full_env)
        self._threads = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_err(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_out(self):
        self.stdout = self.proc.stdout.read()

    def wait_for(self, text: str, nth: int = 1, timeout: float = 120) -> bool:
        """True once the nth stderr line containing `text` was printed; False if
        the process ended (or the timeout passed) first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if sum(text in ln for ln in self.lines) >= nth:
                    return True
                if self._eof or time.monotonic() > deadline:
                    return False
                self._cond.wait(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait(10)
        for t in self._threads:
            t.join(10)
        return subprocess.CompletedProcess(self.args, rc, self.stdout, "".join(self.lines))


def run_id_of(stdout: str) -> str | None:
    """The run id a successful run prints: `D committed: run <id> (...)`."""
    for ln in stdout.splitlines():
        if " committed: run " in ln:
            return ln.split(" committed: run ", 1)[1].split()[0]
    return None


def lock_path(out: Path, date_: str = D) -> Path:
    return Path(out) / "_runs" / f"event_date={date_}.lock"


def wait_until_lock_stale(out: Path, stale: float, date_: str = D) -> None:
    """A killed run's lock is taken over once not refreshed for `stale` s."""
    p = lock_path(out, date_)
    while True:
        try:
            age = time.time() - p.stat().st_mtime
        except FileNotFoundError:
            return
        if age > stale + 0.15:
            return
        time.sleep(stale + 0.15 - age)


STALE = 1.0
CRASH_ENV = {"CONVMART_LOCK_STALE_SECS": str(STALE)}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A bigger generated input (runs last a few seconds) and its first good run."""
    root = tmp_path_factory.mktemp("failures_big")
    inp = generate(root / "input", events_per_day=BIG_EVENTS_PER_DAY)
    out = root / "out"
    assert_ok(run_job(inp, out))
    _, ref = committed(out)
    return {"input": inp, "out": out, "ref": ref}


# ====================================================== crash safety
def test_sigkill_at_many_moments_of_a_rerun_never_shows_a_half_written_date(big, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(big["out"], out)
    t0 = time.monotonic()
    assert_ok(run_job(big["input"], out, env=CRASH_ENV))
    duration = time.monotonic() - t0
    # moments: 10 spread over the run's measured duration, and on log lines that
    # mark the write and commit phase (with small delays after the last one)
    moments = [("delay", f"{duration * (i + 0.5) / 10:.2f}s", None, duration * (i + 0.5) / 10)
               for i in range(10)]
    moments += [("line", "lock taken", 1, 0.0)] + \
        [("line", "table staged", n, 0.0) for n in (1, 2, 3, 4)] + \
        [("line", "table staged", 4, d) for d in (0.02, 0.05, 0.1)]
    log = []
    killed = 0
    for kind, what, nth, delay in moments:
        wait_until_lock_stale(out, STALE)
        job = Job("run", "--input", big["input"], "--output", out, "--date", D,
                  "--lookback-days", LOOKBACK, env=CRASH_ENV)
        if kind == "delay":
            time.sleep(delay)
        else:
            assert job.wait_for(what, nth), \
                f"never saw line #{nth} {what!r}:\n{''.join(job.lines)[-3000:]}"
            time.sleep(delay)
        job.kill()
        res = job.finish()
        assert res.returncode in (-signal.SIGKILL, 0), (
            f"run to be killed at {what} exited {res.returncode}:\n{res.stderr[-3000:]}")
        killed += res.returncode == -signal.SIGKILL
        # a reader that follows the manifest sees one complete run
        m, tables = committed(out)
        assert_same_tables(tables, big["ref"], f"after SIGKILL at {what} (#{nth})")
        log.append(f"{what}#{nth}+{delay}: exit {res.returncode}, manifest run {m['run_id']}")
    assert killed >= 10, f"only {killed} runs were really killed:\n" + "\n".join(log)
    # the next normal run completes and leaves exactly one run's files
    wait_until_lock_stale(out, STALE)
    final = run_job(big["input"], out, env=CRASH_ENV)
    assert_ok(final)
    m = assert_exactly_manifest_files(out)
    assert m["run_id"] == run_id_of(final.stdout)
    assert not lock_path(out).exists(), "the lock of a finished run is still there"
    _, tables = committed(out)
    assert_same_tables(tables, big["ref"], "final run after the kills")


# ====================================================== concurrency
def assert_one_winner(results, out, ref, what, winners=(1,)):
    """Exit codes: `winners` gives the allowed numbers of runs exiting 0, all
    others exit 75 naming the lock; the output is one run's files, the
    manifest's, equal to the reference tables."""
    codes = sorted(r.returncode for r in results)
    assert codes.count(0) in winners and all(c in (0, EXIT_TEMP) for c in codes), (
        f"{what}: exit codes {codes}, expected {' or '.join(map(str, winners))} 0 and the "
        f"others 75\n" + "\n".join(
            f"--- run {i} stderr ---\n{r.stderr[-1500:]}" for i, r in enumerate(results)))
    for r in results:
        if r.returncode == EXIT_TEMP:
            line = error_line(r)
            assert "locked" in line and D in line, line
    m = assert_exactly_manifest_files(out)
    winner = next((r for r in results if r.returncode == 0), None)
    if winner is not None:
        assert m["run_id"] == run_id_of(winner.stdout), (m["run_id"], winner.stdout)
    _, tables = committed(out)
    assert_same_tables(tables, ref, what)
    assert not lock_path(out).exists(), "the lock of a finished run is still there"


def test_two_runs_of_the_same_date_at_once_leave_one_run_local(big, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(big["out"], out)
    args = ("run", "--input", big["input"], "--output", out, "--date", D,
            "--lookback-days", LOOKBACK)
    jobs = [Job(*args), Job(*args)]
    results = [j.finish() for j in jobs]
    assert_one_winner(results, out, big["ref"], "two concurrent runs")


def test_runs_racing_to_take_over_a_stale_lock_leave_one_run(base, tmp_path):
    """A crashed run left its lock; several retries start together, each sees
    the stale lock and tries to take it over. At most one may commit; the others
    exit 75 (a lock is a temporary condition, never a data error: 65 tells the
    scheduler not to retry); the date holds one run's files. The race window is
    a few milliseconds at lock time, so it is tried several times."""
    ref = committed(base["out"])[1]
    for attempt in range(RACE_ATTEMPTS):
        out = tmp_path / f"out{attempt}"
        shutil.copytree(base["out"], out)
        lk = lock_path(out)
        lk.write_text(json.dumps({"run_id": "crashed-run", "pid": 1,
                                  "refreshed_at": "2024-01-01T00:00:00Z"}))
        old = time.time() - 3600
        os.utime(lk, (old, old))
        args = ("run", "--input", base["input"], "--output", out, "--date", D,
                "--lookback-days", LOOKBACK)
        jobs = [Job(*args, env=CRASH_ENV) for _ in range(RACE_RUNS)]
        results = [j.finish() for j in jobs]
        assert_one_winner(results, out, ref, f"stale-lock takeover race #{attempt}",
                          winners=(0, 1))


RACE_ATTEMPTS, RACE_RUNS = 8, 4


def test_lock_vanishing_between_create_and_read_is_temporary(work):
    """Deterministic form of the race above: the lock exists for the create-only
    write but is gone when the run reads who holds it (a dangling symlink on
    local disk gives exactly that). That is lock contention, a temporary fault:
    exit 75 (or taking the lock and succeeding), never 65 "data error"."""
    lk = lock_path(work["out"])
    lk.symlink_to(work["out"] / "_runs" / "no-such-lock-target")
    proc = run_job(work["input"], work["out"])
    assert proc.returncode in (0, EXIT_TEMP), (
        f"exit {proc.returncode}, expected 75 (or 0)\n{proc.stderr[-2000:]}")
    if proc.returncode == EXIT_TEMP:
        assert_unchanged(work["before"], {k: v for k, v in snapshot(work["out"]).items()
                                          if not k.endswith(".lock")})
    else:
        assert_exactly_manifest_files(work["out"])


# ====================================================== storage faults (real SeaweedFS)
CANARY_SECRET = "cmSECRETcanary-Zq7Vx3Lp9Ke2Wb5Nf8Hd"
CANARY_TOKEN = "cmTOKENcanary-Rt4Yu6Io1Pa3Sd5Fg7Jk"
CANARY_WRONG = "cmWRONGcanary-Mn2Bv4Cx6Zl8Kj0Hg1Fd"
RETRY_SECS = 3


class OwnS3(S3Server):
    """A private SeaweedFS for the tests that stop it: `stop()` is SIGKILL,
    `start()` again restarts it on the same data directory and ports."""

    def start(self, timeout: float = 60.0) -> "OwnS3":
        if not self.ports:
            return super().start(timeout)
        keep = [self.ports[k] for k in ("s3", "master", "volume", "filer", "webdav", "admin")]
        orig = s3server.pick_ports
        s3server.pick_ports = lambda n: list(keep)
        try:
            return super().start(timeout)
        finally:
            s3server.pick_ports = orig


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory):
    """Its secret key is a canary string, so the secrets test can look for it."""
    srv = OwnS3(data_dir=tmp_path_factory.mktemp("own_seaweedfs"), secret_key=CANARY_SECRET,
                buckets=("convmart-faults",))
    try:
        srv.start()
    except RuntimeError as e:
        pytest.fail(f"could not start SeaweedFS: {e}", pytrace=False)
    yield srv
    srv.stop()


def endpoint_host_port(env: dict) -> str:
    """host:port of the endpoint convmart is told to use."""
    return env["AWS_ENDPOINT_URL"].split("://", 1)[1].rstrip("/")


def s3_snapshot(srv: S3Server, prefix: str) -> dict[str, bytes]:
    return {k: read_after_restart(srv, f"{prefix}/{k}") for k in srv.list(prefix)}


def read_after_restart(srv: S3Server, key: str, timeout: float = 30) -> bytes:
    """An object's bytes, retrying while a just-restarted SeaweedFS is still
    bringing its volume server back (GETs fail with 500 for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return srv.read_bytes(key)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def s3_committed_locally(srv: S3Server, prefix: str, dest: Path):
    """Download the output prefix and look at it with the local-disk helpers."""
    if dest.exists():
        shutil.rmtree(dest)
    srv.download_dir(prefix, dest)
    return dest


def no_secret_in(text: str | bytes, *secrets: str) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [s for s in secrets if s in text or s[-16:] in text]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_down_before_the_run_is_75_naming_the_endpoint_never_the_secret(own_s3, base):
    srv, prefix = own_s3, "down"
    srv.upload_dir(base["input"], f"{prefix}/events")
    env = {**srv.env(), "CONVMART_S3_RETRY_SECS": str(RETRY_SECS)}
    inp, out = srv.url(f"{prefix}/events"), srv.url(f"{prefix}/out")
    assert_ok(run_job(inp, out, env=env))
    before = s3_snapshot(srv, f"{prefix}/out")
    srv.stop()
    try:
        t0 = time.monotonic()
        proc = run_job(inp, out, env=env, timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        srv.start()
    assert_fails(proc, EXIT_TEMP, endpoint_host_port(env))
    assert not no_secret_in(proc.stdout + proc.stderr, srv.secret_key)
    assert elapsed < RETRY_SECS + 10, (
        f"CONVMART_S3_RETRY_SECS={RETRY_SECS} but the run took {elapsed:.1f}s to give up")
    assert_unchanged(before, s3_snapshot(srv, f"{prefix}/out"))


def test_s3_killed_while_writing_outputs_keeps_the_previous_output(own_s3, big, tmp_path):
    srv, prefix = own_s3, "midwrite"
    srv.upload_dir(big["input"], f"{prefix}/events")
    env = {**srv.env(), "CONVMART_S3_RETRY_SECS": str(RETRY_SECS), **CRASH_ENV}
    inp, out = srv.url(f"{prefix}/events"), srv.url(f"{prefix}/out")
    assert_ok(run_job(inp, out, env=env))
    before = s3_snapshot(srv, f"{prefix}/out")
    manifest_key = f"_runs/event_date={D}.json"
    first = json.loads(before[manifest_key])
    job = Job("run", "--input", inp, "--output", out, "--date", D, "--lookback-days", LOOKBACK,
              env=env)
    try:
        assert job.wait_for("table staged"), f"no table was staged:\n{''.join(job.lines)[-3000:]}"
        srv.stop()
        res = job.finish(timeout=120)
    finally:
        srv.stop()
        srv.start()
    assert_fails(res, EXIT_TEMP, endpoint_host_port(env))
    keys = srv.list(f"{prefix}/out")
    # no manifest for the failed run: the previous one, byte for byte
    assert [k for k in keys if k.startswith("_runs/") and k.endswith(".json")] == [manifest_key]
    assert read_after_restart(srv, f"{prefix}/out/{manifest_key}") == before[manifest_key], \
        "the manifest changed"
    # its files are intact and readable with pyarrow straight from S3
    fs = srv.filesystem()
    tables = {}
    for t in TABLES:
        parts = []
        for f in first["tables"][t]["files"]:
            key = f"{prefix}/out/{f['path']}"
            assert f["path"] in keys, f"{f['path']} of the committed run vanished"
            assert read_after_restart(srv, key) == before[f["path"]], f"{f['path']} changed"
            parts.append(pq.read_table(f"{srv.bucket}/{key}", filesystem=fs))
        tables[t] = pa.concat_tables(parts)
        assert tables[t].num_rows == first["tables"][t]["rows"]
    assert_same_tables(tables, big["ref"], "after the S3 server died mid-write")
    # safe to retry: the next run commits and leaves exactly one run's files
    time.sleep(STALE + 0.2)
    retry = run_job(inp, out, env=env)
    assert_ok(retry)
    local = s3_committed_locally(srv, f"{prefix}/out", tmp_path / "after_retry")
    m = assert_exactly_manifest_files(local)
    assert m["run_id"] == run_id_of(retry.stdout)
    assert not lock_path(local).exists(), "the lock of the finished run is still there"
    _, tables = committed(local)
    assert_same_tables(tables, big["ref"], "retry after the S3 outage")


@pytest.mark.parametrize("wrong", ["secret", "access_key"])
def test_wrong_s3_credentials_are_exit_2_and_write_nothing(s3, base, wrong):
    prefix = f"wrongcreds-{wrong}"
    s3.upload_dir(base["input"], f"{prefix}/events")
    inp, out = s3.url(f"{prefix}/events"), s3.url(f"{prefix}/out")
    assert_ok(run_job(inp, out, env=s3.env()))
    before = s3_snapshot(s3, f"{prefix}/out")
    env = {**s3.env(), "CONVMART_S3_RETRY_SECS": str(RETRY_SECS)}
    if wrong == "secret":
        env["AWS_SECRET_ACCESS_KEY"] = CANARY_WRONG
    else:
        env["AWS_ACCESS_KEY_ID"] = "no-such-key-id"
    t0 = time.monotonic()
    proc = run_job(inp, out, env=env, timeout=120)
    elapsed = time.monotonic() - t0
    line = assert_fails(proc, EXIT_ARGS, "AWS_ACCESS_KEY_ID")
    assert "denied" in line.lower(), line
    assert not no_secret_in(proc.stdout + proc.stderr, CANARY_WRONG, s3.secret_key)
    assert elapsed < RETRY_SECS + 10, f"wrong credentials took {elapsed:.1f}s to report"
    assert_unchanged(before, s3_snapshot(s3, f"{prefix}/out"))


def test_two_runs_of_the_same_date_at_once_leave_one_run_s3(s3, big, tmp_path):
    prefix = "concurrent"
    s3.upload_dir(big["input"], f"{prefix}/events")
    inp, out = s3.url(f"{prefix}/events"), s3.url(f"{prefix}/out")
    assert_ok(run_job(inp, out, env=s3.env()))
    args = ("run", "--input", inp, "--output", out, "--date", D, "--lookback-days", LOOKBACK)
    jobs = [Job(*args, env=s3.env()), Job(*args, env=s3.env())]
    results = [j.finish() for j in jobs]
    local = s3_committed_locally(s3, f"{prefix}/out", tmp_path / "out")
    assert_one_winner(results, local, big["ref"], "two concurrent runs on S3")


# ====================================================== secrets
def test_secrets_never_appear_in_output_logs_or_manifest(own_s3, base):
    srv, prefix = own_s3, "secrets"
    srv.upload_dir(base["input"], f"{prefix}/events")
    inp, out = srv.url(f"{prefix}/events"), srv.url(f"{prefix}/out")
    good = {**srv.env(), "CONVMART_S3_RETRY_SECS": "2"}
    assert good["AWS_SECRET_ACCESS_KEY"] == CANARY_SECRET
    token = {**good, "AWS_SESSION_TOKEN": CANARY_TOKEN}
    down = {**token, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    wrong = {**token, "AWS_SECRET_ACCESS_KEY": CANARY_WRONG}
    debug = {"CONVMART_LOG": "debug"}
    runs = [  # (what, args, env, expected exit)
        ("run, text logs", ["run"], good, EXIT_OK),
        ("run, json logs, debug", ["run", "--log-format", "json"], {**good, **debug}, EXIT_OK),
        ("run, text, debug", ["run"], {**good, **debug}, EXIT_OK),
        # SeaweedFS has no STS: a session token makes it refuse the request
        ("run with session token", ["run"], token, EXIT_ARGS),
        ("run with session token, json, debug", ["run", "--log-format", "json"],
         {**token, **debug}, EXIT_ARGS),
        ("wrong secret", ["run"], wrong, EXIT_ARGS),
        ("wrong secret, json", ["run", "--log-format", "json"], wrong, EXIT_ARGS),
        ("S3 down", ["run"], down, EXIT_TEMP),
        ("S3 down, json, debug", ["run", "--log-format", "json"], {**down, **debug}, EXIT_TEMP),
    ]
    leaks, codes = [], []
    for what, cmd, env, want in runs:
        proc = run_convmart(*cmd, "--input", inp, "--output", out, "--date", D,
                            "--lookback-days", LOOKBACK, env=env, timeout=120)
        codes.append((what, proc.returncode, want))
        found = no_secret_in(proc.stdout + proc.stderr, CANARY_SECRET, CANARY_TOKEN, CANARY_WRONG)
        if found:
            leaks.append(f"{what}: {found} in stdout/stderr")
    for what, args, env in [
        ("validate", ["validate", "--input", inp, "--date", D], good),
        ("validate, token", ["validate", "--input", inp, "--date", D], {**token, **debug}),
        ("generate", ["generate", "--output", srv.url(f"{prefix}/gen"), "--start-date", D,
                      "--days", 1, "--events-per-day", 50], {**good, **debug}),
    ]:
        proc = run_convmart(*args, env=env, timeout=120)
        codes.append((what, proc.returncode, None))
        found = no_secret_in(proc.stdout + proc.stderr, CANARY_SECRET, CANARY_TOKEN, CANARY_WRONG)
        if found:
            leaks.append(f"{what}: {found} in stdout/stderr")
    for key, data in s3_snapshot(srv, prefix).items():
        if key.startswith("events/"):
            continue
        found = no_secret_in(data, CANARY_SECRET, CANARY_TOKEN, CANARY_WRONG)
        if found:
            leaks.append(f"object {key}: {found}")
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
    # the scenarios really happened (exit codes themselves are other tests' business)
    bad = [(w, c, e) for w, c, e in codes
           if e is not None and (c != 0 if e == EXIT_OK else c not in (EXIT_ARGS, EXIT_TEMP))]
    assert not bad, f"a scenario did not happen as intended (what, got, wanted): {bad}"
    assert f"_runs/event_date={D}.json" in srv.list(f"{prefix}/out")
