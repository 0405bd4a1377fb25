"""convmart agrees row for row with bench/reference_duckdb.py, an independent
DuckDB implementation of SPEC sections 1-4.

First the reference itself is checked against a small hand-made input whose
expected values are worked out by hand below (so a wrong reference cannot
"agree" its way through). Then both run on generated data (8 days x 5000
events, seed 11) for the last date with lookback 5, in both attribution modes.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tablediff import REPO, TABLES, diff_tables, read_partition, run_convmart

REFERENCE = REPO / "bench" / "reference_duckdb.py"

START = dt.date(2024, 5, 1)
DAYS = 8
EVENTS_PER_DAY = 5000
SEED = 11
LOOKBACK = 5
REPORT_DATE = (START + dt.timedelta(days=DAYS - 1)).isoformat()


def run_reference(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REFERENCE), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-4000:]}",
                    pytrace=False)
    return proc


# --------------------------------------------------------------------------
# The reference on a hand-worked example (no convmart needed)
# --------------------------------------------------------------------------
def _write(root: Path, day: str, name: str, rows: list[dict], ts_type=pa.timestamp("us"),
           rev_type=pa.float64(), extra: dict | None = None) -> None:
    d = root / f"event_date={day}"
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k in ("event_id", "event_time", "event_type", "user_id", "anonymous_id", "utm_source",
              "utm_medium", "utm_campaign", "utm_content", "utm_term", "device_type",
              "country", "revenue"):
        v = [r.get(k) for r in rows]
        if k == "event_time":
            if ts_type.tz:
                v = [x.replace(tzinfo=dt.timezone.utc) if x else None for x in v]
            arrays[k] = pa.array(v, ts_type)
        elif k == "revenue":
            arrays[k] = pa.array(v, rev_type)
        else:
            arrays[k] = pa.array(v, pa.string())
    arrays.update(extra or {})
    pq.write_table(pa.table(arrays), d / name)


def _t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def make_hand_example(root: Path) -> None:
    """D = 2024-03-10, L = 3 (reads 03-07 .. 03-10). See the expectations in
    test_reference_matches_hand_worked_example for what each row is for."""
    # outside the lookback: must not be read (u2's only touch)
    _write(root, "2024-03-06", "part-0.parquet", [
        dict(event_id="z0", event_time=_t("2024-03-07 09:00"), event_type="page_view",
             user_id="u2", utm_source="bing")])
    _write(root, "2024-03-07", "part-0.parquet", [
        dict(event_id="a1", event_time=_t("2024-03-07 10:00"), event_type="page_view",
             user_id="u1", utm_source="google", utm_medium="cpc", utm_campaign="spring")],
        ts_type=pa.timestamp("ms", tz="UTC"))
    _write(root, "2024-03-09", "part-0.parquet", [
        dict(event_id="b1", event_time=_t("2024-03-09 12:00"), event_type="newsletter_signup",
             user_id="u1"),
        dict(event_id="dup1", event_time=_t("2024-03-10 08:00"), event_type="purchase",
             user_id="u3", revenue=50)],
        rev_type=pa.int64())
    _write(root, "2024-03-10", "part-0.parquet", [
        dict(event_id="c1", event_time=_t("2024-03-10 09:00"), event_type="purchase",
             user_id="u1", revenue=100, device_type="desktop", country="DE"),
        dict(event_id="c2", event_time=_t("2024-03-10 11:00"), event_type="purchase",
             user_id="u1", revenue=20, device_type="desktop", country="DE"),
        dict(event_id="dup1", event_time=_t("2024-03-10 08:00"), event_type="purchase",
             user_id="u3", revenue=50),
        dict(event_id="dup2", event_time=_t("2024-03-10 07:00"), event_type="phone_call",
             anonymous_id="a7", device_type="mobile"),
        dict(event_id="", event_time=_t("2024-03-10 07:00"), event_type="purchase",
             user_id="u1", revenue=1),
        dict(event_id="r2", event_time=_t("2024-03-10 07:00"), event_type=None, user_id="u1"),
        dict(event_id="r3", event_time=None, event_type="purchase", user_id="u1"),
        dict(event_id=None, event_time=_t("2024-03-10 07:00"), event_type="", user_id="u1")],
        rev_type=pa.int64(), ts_type=pa.timestamp("s"))
    _write(root, "2024-03-10", "part-1.parquet", [
        dict(event_id="c0", event_time=_t("2024-03-10 11:00"), event_type="page_view",
             user_id="u1", utm_source="facebook", utm_medium="social", utm_content="fb_c",
             device_type="mobile", country="DE"),
        dict(event_id="c0b", event_time=_t("2024-03-10 11:00"), event_type="ad_click",
             user_id="u1", utm_source="tiktok", utm_medium="video", utm_term="",
             device_type="mobile", country="DE"),
        dict(event_id="dup2", event_time=_t("2024-03-10 07:00"), event_type="phone_call",
             anonymous_id="a7", device_type="mobile"),
        dict(event_id="n1", event_time=_t("2024-03-10 12:00"), event_type="social_like",
             device_type="mobile", country=""),
        dict(event_id="e1", event_time=_t("2024-03-10 13:00"), event_type="page_view",
             user_id="", anonymous_id="x"),
        dict(event_id="c3", event_time=_t("2024-03-10 14:00"), event_type="demo_request",
             anonymous_id="anon9", utm_source="google", utm_medium=""),
        dict(event_id="c4", event_time=_t("2024-03-10 15:00"), event_type="purchase",
             user_id="u2", revenue=5.25)],
        ts_type=pa.timestamp("ns", tz="UTC"),
        extra={"page_url": pa.array(["/a", "/b", "/c", "/d", "/e", "/f", "/g"])})
    (root / "event_date=2024-03-10" / "_SUCCESS").write_text("")
    (root / "event_date=2024-03-10" / ".part-0.parquet.crc").write_text("not parquet")


def _rows(table: pa.Table, key_cols) -> dict:
    return {tuple(r[c] for c in key_cols): r for r in table.to_pylist()}


D_ = "(direct)", "(none)", "(not set)", "(not set)", "(not set)"
NS = "(not set)"


def test_reference_matches_hand_worked_example(tmp_path):
    make_hand_example(tmp_path / "in")
    out = tmp_path / "out"
    run_reference("--input", tmp_path / "in", "--output", out, "--date", "2024-03-10",
                  "--lookback-days", 3)
    grain = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
             "device_type", "country")
    cd = _rows(read_partition(out, "campaign_daily", "2024-03-10"), grain)
    # Events of D: c1 c2 dup2 c0 c0b n1 e1 c3 c4 (dup1 survives in 03-09: same
    # time, earlier partition; dup2 is delivered twice; 4 rows rejected).
    assert sum(r["events"] for r in cd.values()) == 9
    # c1 (09:00): last touch a1 (03-07 10:00) is inside [03-07 09:00, 03-10 09:00];
    # assisted by b1 (soft, 03-09 12:00).
    r = cd[("google", "cpc", "spring", NS, NS, "desktop", "DE")]
    assert (r["events"], r["users"], r["hard_conversions"], r["hard_value"],
            r["assisted_hard_conversions"], r["hard_conversion_rate"]) == (1, 1, 1, 100.0, 1, 1.0)
    # c2 (11:00): a1 is now 1 h too old; c0 and c0b touch at exactly 11:00,
    # the greater event_id (c0b) wins, all five dimensions from it: its null
    # utm_content stays (not set) (not c0's fb_c), its empty utm_term too.
    r = cd[("tiktok", "video", NS, NS, NS, "desktop", "DE")]
    assert (r["events"], r["hard_value"], r["assisted_hard_conversions"]) == (1, 20.0, 1)
    # the touches themselves keep their own dimensions
    assert cd[("facebook", "social", NS, "fb_c", NS, "mobile", "DE")]["events"] == 1
    assert cd[("tiktok", "video", NS, NS, NS, "mobile", "DE")]["events"] == 1
    # dup2 (a7, phone_call) + n1 (no user key, soft): users counts only a7,
    # soft_converters 0, rates from converters / users.
    r = cd[D_ + ("mobile", NS)]
    assert (r["events"], r["users"], r["hard_conversions"], r["soft_conversions"],
            r["hard_converters"], r["soft_converters"], r["hard_conversion_rate"],
            r["soft_conversion_rate"]) == (2, 1, 1, 1, 1, 0, 1.0, 0.0)
    # e1 (user key '' is a key) + c4 (u2's touch z0 is outside the lookback)
    r = cd[D_ + (NS, NS)]
    assert (r["events"], r["users"], r["hard_conversions"], r["hard_value"]) == (2, 2, 1, 5.25)
    # c3: own touch, empty utm_medium becomes (not set)
    assert cd[("google", NS, NS, NS, NS, NS, NS)]["hard_conversions"] == 1
    assert len(cd) == 7

    ds_ = _rows(read_partition(out, "dimension_summary", "2024-03-10"),
                ("dimension", "dimension_value"))
    total = ds_[("total", "(all)")]
    assert (total["events"], total["users"], total["hard_conversions"],
            total["soft_conversions"], total["hard_converters"], total["soft_converters"],
            total["hard_value"], total["soft_value"], total["assisted_hard_conversions"],
            total["hard_conversion_rate"]) == (9, 5, 5, 1, 4, 0, 125.25, 0.0, 2, 0.8)
    # distinct at the dimension grain, not summed: google = c1 (u1) + c3 (anon9)
    # -> 2 users; country DE = c1 c2 c0 c0b, all u1 -> 1 user
    assert ds_[("utm_source", "google")]["users"] == 2
    assert ds_[("country", "DE")]["users"] == 1 and ds_[("country", "DE")]["events"] == 4
    assert len(ds_) == 20

    cbn = _rows(read_partition(out, "conversions_by_name", "2024-03-10"),
                ("conversion_name", "utm_source", "utm_medium", "utm_campaign"))
    assert cbn[("purchase", "google", "cpc", "spring")]["value"] == 100.0
    assert cbn[("social_engagement",) + D_[:3]]["converters"] == 0
    assert sum(r["conversions"] for r in cbn.values()) == 6

    rej = read_partition(out, "rejected_events", "2024-03-10")
    assert rej.schema.names[:3] == ["event_id", "event_time", "event_type"]
    assert rej.schema.names[-2:] == ["page_url", "reject_reason"]
    assert rej.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert rej.schema.field("revenue").type == pa.float64()
    assert sorted(rej.column("reject_reason").to_pylist()) == [
        "missing_event_id", "missing_event_id", "missing_event_time", "missing_event_type"]

    # --attribution event: c1 and c2 have no own touch -> direct
    out_e = tmp_path / "out_event"
    run_reference("--input", tmp_path / "in", "--output", out_e, "--date", "2024-03-10",
                  "--lookback-days", 3, "--attribution", "event")
    cd_e = _rows(read_partition(out_e, "campaign_daily", "2024-03-10"), grain)
    r = cd_e[D_ + ("desktop", "DE")]
    assert (r["events"], r["users"], r["hard_conversions"], r["hard_converters"],
            r["hard_value"], r["assisted_hard_conversions"]) == (2, 1, 2, 1, 120.0, 2)
    assert ("google", "cpc", "spring", NS, NS, "desktop", "DE") not in cd_e


# --------------------------------------------------------------------------
# convmart vs the reference on generated data
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agreement")
    run_convmart("generate", "--output", root / "input", "--start-date", START.isoformat(),
                 "--days", DAYS, "--events-per-day", EVENTS_PER_DAY, "--seed", SEED)
    assert (root / "input" / f"event_date={REPORT_DATE}").is_dir(), \
        "convmart generate wrote no partition for the last day"
    return root


@pytest.mark.parametrize("attribution", ["last_touch", "event"])
def test_convmart_agrees_with_reference(generated, attribution):
    out_cm = generated / f"out_convmart_{attribution}"
    out_ref = generated / f"out_reference_{attribution}"
    common = ["--input", generated / "input", "--date", REPORT_DATE,
              "--lookback-days", LOOKBACK, "--attribution", attribution]
    run_convmart("run", "--output", out_cm, *common)
    run_reference("--output", out_ref, *common)
    failures = []
    for table in TABLES:
        optional = table == "rejected_events"  # contract: summary tables always have a file
        cm = read_partition(out_cm, table, REPORT_DATE, allow_missing=optional)
        ref = read_partition(out_ref, table, REPORT_DATE)
        if cm is None:
            if ref.num_rows != 0:
                failures.append(f"== {table} ({attribution}) ==\nconvmart wrote no file, "
                                f"the reference has {ref.num_rows} rows")
            continue
        if not optional:
            assert cm.num_rows > 0, f"{table} is empty: the generated data should fill it"
        d = diff_tables(cm, ref, names=("convmart", "reference"))
        if d is not None:
            failures.append(f"== {table} ({attribution}) ==\n{d}")
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
