"""SPEC semantics, end to end, on the hand-made fixtures (fixtures/README.md).

Every expected value below is worked out by hand from the fixture rows
(fixtures/make_fixtures.py), with the reasoning in comments; none is captured
from convmart's output. Each test writes into its own fresh tmp_path.

Abbreviations in comments: ns = '(not set)', DIRECT = ('(direct)', '(none)',
ns, ns, ns), hc/sc = hard/soft converters, hv/sv = hard/soft value.
"""
from __future__ import annotations

import json
import re
import shutil
import tomllib
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import (FIXTURES, REPO, manifest, read_arrow, read_table, run_convmart,
                      table_dir, table_files)

D = "2024-03-10"
NS = "(not set)"
DIRECT = ("(direct)", "(none)", NS, NS, NS)

GRAIN = ["utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
         "device_type", "country"]
METRICS = ["events", "users", "hard_conversions", "soft_conversions", "hard_converters",
           "soft_converters", "hard_value", "soft_value", "assisted_hard_conversions",
           "hard_conversion_rate", "soft_conversion_rate"]
CBN_GRAIN = ["conversion_name", "kind", "utm_source", "utm_medium", "utm_campaign"]
DIM_ORDER = ["total", "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
             "device_type", "country"]
SPEC_INPUT = ["event_id", "event_time", "event_type", "user_id", "anonymous_id", "utm_source",
              "utm_medium", "utm_campaign", "utm_content", "utm_term", "device_type", "country",
              "revenue"]
TABLES = ["campaign_daily", "dimension_summary", "conversions_by_name", "rejected_events"]
SUMMARY_TABLES = TABLES[:3]


# --------------------------------------------------------------------------- helpers

def m(events, users, hard=0, soft=0, hc=0, sc=0, hv=0.0, sv=0.0, assisted=0) -> dict:
    """The metric columns; rates follow SPEC 3.7 (converters / users, null when users = 0)."""
    return {
        "events": events, "users": users,
        "hard_conversions": hard, "soft_conversions": soft,
        "hard_converters": hc, "soft_converters": sc,
        "hard_value": float(hv), "soft_value": float(sv),
        "assisted_hard_conversions": assisted,
        "hard_conversion_rate": hc / users if users else None,
        "soft_conversion_rate": sc / users if users else None,
    }


def cd(dims: tuple, device: str, country: str, metrics: dict) -> dict:
    """A campaign_daily row: 5 utm dims, device_type, country, metrics."""
    return dict(zip(GRAIN, (*dims, device, country)), **metrics)


def ds(dimension: str, value: str, metrics: dict) -> dict:
    return {"dimension": dimension, "dimension_value": value, **metrics}


def cbn(name, kind, src, med, camp, conversions, converters, value) -> dict:
    return {"conversion_name": name, "kind": kind, "utm_source": src, "utm_medium": med,
            "utm_campaign": camp, "conversions": conversions, "converters": converters,
            "value": float(value)}


def touch(src, med=NS, camp=NS, content=NS, term=NS) -> tuple:
    return (src, med, camp, content, term)


def _norm(v):
    return round(v, 9) if isinstance(v, float) else v


def _key(row: dict):
    return tuple((k, v is None, str(v)) for k, v in sorted(row.items()))


def normalized(rows: list[dict]) -> list[dict]:
    """Floats rounded (rates like 5/9), rows in a canonical order: compare as multisets."""
    out = [{k: _norm(v) for k, v in r.items()} for r in rows]
    return sorted(out, key=_key)


def assert_rows(actual: list[dict], expected: list[dict]) -> None:
    assert normalized(actual) == normalized(expected)


def run_ok(inp: Path | str, out: Path, *extra, date: str = D):
    r = run_convmart("run", "--input", inp, "--output", out, "--date", date, *extra)
    assert r.returncode == 0, f"exit {r.returncode}\nstderr:\n{r.stderr}"
    return r


def by_country(rows: list[dict], country: str) -> dict:
    hits = [r for r in rows if r["country"] == country]
    assert len(hits) == 1, f"expected one row with country {country}, got {hits}"
    return hits[0]


def dims_of(row: dict) -> tuple:
    return tuple(row[c] for c in GRAIN[:5])


def metrics_of(row: dict) -> dict:
    return {k: _norm(row[k]) for k in METRICS}


def dim_rows(rows: list[dict], dimension: str) -> list[dict]:
    return [r for r in rows if r["dimension"] == dimension]


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / "input"
    shutil.copytree(FIXTURES / name, dst)
    return dst


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under out (relative path -> bytes), to prove a failed run changed nothing."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def output_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()] if out.exists() else []


# =========================================================================== SPEC 3.2 dedup
# fixtures/dedup, D = 2024-03-10, --lookback-days 2 (reads 03-08 .. 03-10).
# Rows (id, partition, event_time, country):
#   d1 08 03-08T10:00 FR | d1 10 03-10T08:00 NL   -> 08 copy earlier: d1 is not an event of D
#   d2 09 03-09T09:00 FR | d2 10 03-09T09:00 NO   -> equal time, 09 earlier partition: not of D
#   d3 08 03-08T11:00 FR (purchase 999) | d3 10 03-08T09:00 DE (page_view) -> D copy earlier: of D
#   d4 10 03-10T12:00 PL purchase 40, twice (two files of D)              -> one event of D
#   d5 09 03-10T01:00 FR                                                 -> of 03-09 (partition decides)
#   d6 10 03-09T23:30 SE                                                 -> of D (partition decides)
#   d7 09 03-09T15:00 FR | d7 10 03-09T14:00 IS   -> D copy earlier: of D
# No utm anywhere: everything is DIRECT; device_type absent -> ns.

DEDUP_D_CAMPAIGN_DAILY = [
    cd(DIRECT, NS, "DE", m(1, 1)),                      # d3 (D copy: page_view, not the 999 purchase)
    cd(DIRECT, NS, "IS", m(1, 1)),                      # d7
    cd(DIRECT, NS, "PL", m(1, 1, hard=1, hc=1, hv=40)),  # d4 counted once: value 40, not 80
    cd(DIRECT, NS, "SE", m(1, 1)),                      # d6
]


def test_dedup_keeps_earliest_time_then_earliest_partition(tmp_path):
    out = tmp_path / "out"
    run_ok(FIXTURES / "dedup", out, "--lookback-days", "2")
    rows = read_table(out, "campaign_daily", D)
    assert_rows(rows, DEDUP_D_CAMPAIGN_DAILY)


def test_duplicate_of_earlier_partition_row_is_not_an_event_of_d(tmp_path):
    out = tmp_path / "out"
    run_ok(FIXTURES / "dedup", out, "--lookback-days", "2")
    countries = {r["country"] for r in read_table(out, "campaign_daily", D)}
    # d1 (later time in D, NL) and d2 (equal time, D is the later partition, NO) lost
    assert "NL" not in countries and "NO" not in countries
    # d1, d2, d5 are not events of D; 4 events: d3, d4, d6, d7; 4 users u3, u4, u6, u7
    total = dim_rows(read_table(out, "dimension_summary", D), "total")
    assert_rows(total, [ds("total", "(all)", m(4, 4, hard=1, hc=1, hv=40))])


def test_identical_redelivery_counts_once(tmp_path):
    out = tmp_path / "out"
    run_ok(FIXTURES / "dedup", out, "--lookback-days", "2")
    # d4 delivered twice in partition D: one purchase, value 40
    assert_rows(read_table(out, "conversions_by_name", D),
                [cbn("purchase", "hard", *DIRECT[:3], 1, 1, 40)])


def test_partition_decides_report_date_not_event_time(tmp_path):
    out = tmp_path / "out"
    run_ok(FIXTURES / "dedup", out, "--lookback-days", "2", date="2024-03-09")
    # D = 03-09 reads 03-07 (absent), 03-08, 03-09; partition 03-10 is not read.
    # Survivors of 03-09: d2 (09 copy), d5 (event_time on 03-10, still of 03-09),
    # d7 (the 09 copy is the only one read). All FR, users u2, u5, u7.
    assert_rows(read_table(out, "campaign_daily", "2024-03-09"),
                [cd(DIRECT, NS, "FR", m(3, 3))])
    # and for D = 03-10 the event d6 (event_time 03-09T23:30) belongs to 03-10
    out2 = tmp_path / "out2"
    run_ok(FIXTURES / "dedup", out2, "--lookback-days", "2")
    assert by_country(read_table(out2, "campaign_daily", D), "SE")["events"] == 1


def test_manifest_fields(tmp_path):
    out = tmp_path / "out"
    run_ok(FIXTURES / "dedup", out, "--lookback-days", "2")
    man = manifest(out, D)
    version = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
    assert man["job"] == "convmart"
    assert man["version"] == version
    assert isinstance(man["run_id"], str) and man["run_id"]
    assert man["event_date"] == D
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", man["rules_hash"]), man["rules_hash"]
    assert man["lookback_days"] == 2
    assert man["attribution"] == "last_touch"
    started = datetime.fromisoformat(man["started_at"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(man["finished_at"].replace("Z", "+00:00"))
    assert started.tzinfo is not None and started <= finished
    # input files: 08/part-0 (2 rows), 09/part-0 (3), 10/part-a (6), 10/part-b (1)
    expected_inputs = {
        "event_date=2024-03-08/part-0.parquet": 2,
        "event_date=2024-03-09/part-0.parquet": 3,
        "event_date=2024-03-10/part-a.parquet": 6,
        "event_date=2024-03-10/part-b.parquet": 1,
    }
    got = {}
    for f in man["input_files"]:
        key = "/".join(f["path"].rstrip("/").split("/")[-2:])
        got[key] = f["rows"]
        assert f["size"] == (FIXTURES / "dedup" / key).stat().st_size, f
    assert got == expected_inputs
    # 12 rows read, all valid; survivors d1..d7 = 7 -> 5 duplicates dropped
    assert man["rows_read"] == 12
    assert man["duplicates_dropped"] == 5
    assert man["rejected_rows"] == {"missing_event_id": 0, "missing_event_type": 0,
                                    "missing_event_time": 0}
    assert set(man["tables"]) == set(TABLES)
    for table, info in man["tables"].items():
        total = 0
        for f in info["files"]:
            p = out / f["path"]
            assert p.is_file(), f"manifest lists missing file {f['path']}"
            assert f["path"].startswith(f"{table}/event_date={D}/part-"), f["path"]
            assert pq.ParquetFile(p).metadata.num_rows == f["rows"]
            assert p.stat().st_size == f["bytes"]
            total += f["rows"]
        assert info["rows"] == total
    assert man["tables"]["campaign_daily"]["rows"] == 4      # DE, IS, PL, SE
    assert man["tables"]["conversions_by_name"]["rows"] == 1
    assert man["tables"]["rejected_events"]["rows"] == 0


# =========================================================================== SPEC 3.3 / 3.4 last touch
# fixtures/lookback, D = 2024-03-10, --lookback-days 2. One country per event of D.
#   touches before D: t1 u1 03-08T12:00:00 edge_in/cpc/c_edge; t2 u2 03-08T11:59:59 edge_out/cpc;
#     u3: t3z 09:00 older/m_z, t3a 10:00 tie_a/m_a/content ct_a, t3b 10:00 tie_b/m_b (03-09);
#     t4 anon4 (no user_id) anon_src/cpc; t5 user u5 + anon dev5 known_src/cpc (03-09T08:00)
#   events of D (country): p1 u1 12:00 AT 100 | p2 u2 12:00 BE 50 | p3 u3 09:00 CH 30 |
#     p4 anon4 DK 20 | p5 u5/dev5b EE 10 | p6 (null)/dev5 FI 5 | t7 no key, touch nokey_src GR |
#     p7 no key 02:00 HU 1 | t8 u8 15:00:00 touch same_instant IE | p8 u8 15:00:00 IT 2 |
#     t8b u8 15:00:01 touch future LU
# All purchases (default rules: hard, value = revenue). device_type absent -> ns.

LOOKBACK = FIXTURES / "lookback"
L2 = ("--lookback-days", "2")

LOOKBACK_CAMPAIGN_DAILY = [
    cd(touch("edge_in", "cpc", "c_edge"), NS, "AT", m(1, 1, hard=1, hc=1, hv=100)),  # exactly 2 days
    cd(DIRECT, NS, "BE", m(1, 1, hard=1, hc=1, hv=50)),            # 2 days + 1 s: direct
    cd(touch("tie_b", "m_b"), NS, "CH", m(1, 1, hard=1, hc=1, hv=30)),  # tie -> greatest id t3b
    cd(touch("anon_src", "cpc"), NS, "DK", m(1, 1, hard=1, hc=1, hv=20)),  # key anon4
    cd(touch("known_src", "cpc"), NS, "EE", m(1, 1, hard=1, hc=1, hv=10)),  # key u5
    cd(DIRECT, NS, "FI", m(1, 1, hard=1, hc=1, hv=5)),             # key dev5 has no touch
    cd(touch("nokey_src", "cpc"), NS, "GR", m(1, 0)),               # own touch, no key: users 0
    cd(DIRECT, NS, "HU", m(1, 0, hard=1, hc=0, hv=1)),              # no key: direct, users 0
    cd(touch("same_instant", "cpc"), NS, "IE", m(1, 1)),            # own touch
    cd(touch("same_instant", "cpc"), NS, "IT", m(1, 1, hard=1, hc=1, hv=2)),  # touch at e.time
    cd(touch("future", "cpc"), NS, "LU", m(1, 1)),                  # own touch
]


def test_last_touch_campaign_daily(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    assert_rows(read_table(out, "campaign_daily", D), LOOKBACK_CAMPAIGN_DAILY)


def test_touch_exactly_lookback_days_before_is_attributed(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    # p1 at 03-10T12:00:00, t1 at 03-08T12:00:00 = e.event_time - 2 days: inside [e-L, e]
    row = by_country(read_table(out, "campaign_daily", D), "AT")
    assert dims_of(row) == ("edge_in", "cpc", "c_edge", NS, NS)


def test_touch_one_second_beyond_lookback_is_direct(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    # p2 at 03-10T12:00:00, t2 at 03-08T11:59:59: one second outside -> direct
    rows = read_table(out, "campaign_daily", D)
    assert dims_of(by_country(rows, "BE")) == DIRECT
    assert all(r["utm_source"] != "edge_out" for r in rows)


def test_latest_touch_wins_ties_take_greatest_event_id(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    # u3: t3z (09:00, greatest id but older) loses to the 10:00 touches; t3a and t3b tie
    # at 10:00 -> greatest event_id t3b; all five dims come from t3b (not t3a's content)
    row = by_country(read_table(out, "campaign_daily", D), "CH")
    assert dims_of(row) == ("tie_b", "m_b", NS, NS, NS)


def test_user_key_is_coalesce_user_id_anonymous_id(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    rows = read_table(out, "campaign_daily", D)
    # p4: only anonymous_id anon4 = key of t4 -> anon_src
    assert dims_of(by_country(rows, "DK")) == touch("anon_src", "cpc")
    # p5: user_id u5 (anonymous dev5b) -> key u5 = key of t5 -> known_src
    assert dims_of(by_country(rows, "EE")) == touch("known_src", "cpc")
    # p6: anonymous dev5, no user_id -> key dev5; t5's key is u5, not dev5 -> direct
    assert dims_of(by_country(rows, "FI")) == DIRECT


def test_event_without_user_key_is_direct_and_not_counted_in_users(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    rows = read_table(out, "campaign_daily", D)
    # p7 (no key) cannot use the earlier no-key touch t7: direct; users 0 -> rates null
    hu = by_country(rows, "HU")
    assert dims_of(hu) == DIRECT
    assert metrics_of(hu) == m(1, 0, hard=1, hc=0, hv=1)
    # t7 is a touch itself; no key: users 0, rates null
    assert metrics_of(by_country(rows, "GR")) == m(1, 0)
    # total users: u1 u2 u3 anon4 u5 dev5 u8 = 7 (t7, p7 have none); 11 events,
    # 8 purchases by 7 keys, value 100+50+30+20+10+5+1+2 = 218
    total = dim_rows(read_table(out, "dimension_summary", D), "total")
    assert_rows(total, [ds("total", "(all)", m(11, 7, hard=8, hc=7, hv=218))])


def test_touch_at_same_instant_is_attributed_later_touch_is_not(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    rows = read_table(out, "campaign_daily", D)
    # p8 15:00:00: t8 at the same instant is in [e-L, e]; t8b 15:00:01 is after
    assert dims_of(by_country(rows, "IT")) == touch("same_instant", "cpc")


def test_touch_takes_its_own_dimensions(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    rows = read_table(out, "campaign_daily", D)
    # t8b is a touch: its own dims, not u8's earlier touch t8
    assert dims_of(by_country(rows, "LU")) == touch("future", "cpc")
    assert dims_of(by_country(rows, "GR")) == touch("nokey_src", "cpc")


def test_conversions_by_name_groups_by_attributed_campaign(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    # DIRECT: p2 (u2, 50), p6 (dev5, 5), p7 (no key, 1) -> 3 conversions, 2 converters, 56
    assert_rows(read_table(out, "conversions_by_name", D), [
        cbn("purchase", "hard", *DIRECT[:3], 3, 2, 56),
        cbn("purchase", "hard", "anon_src", "cpc", NS, 1, 1, 20),
        cbn("purchase", "hard", "edge_in", "cpc", "c_edge", 1, 1, 100),
        cbn("purchase", "hard", "known_src", "cpc", NS, 1, 1, 10),
        cbn("purchase", "hard", "same_instant", "cpc", NS, 1, 1, 2),
        cbn("purchase", "hard", "tie_b", "m_b", NS, 1, 1, 30),
    ])


def test_dimension_summary_distinct_counts_not_summed(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    total_all = m(11, 7, hard=8, hc=7, hv=218)
    expected = [
        ds("total", "(all)", total_all),
        # utm_source: u8 is in same_instant (t8, p8) and future (t8b): 8 = sum of users != 7
        ds("utm_source", "(direct)", m(3, 2, hard=3, hc=2, hv=56)),   # p2 p6 p7
        ds("utm_source", "anon_src", m(1, 1, hard=1, hc=1, hv=20)),
        ds("utm_source", "edge_in", m(1, 1, hard=1, hc=1, hv=100)),
        ds("utm_source", "future", m(1, 1)),
        ds("utm_source", "known_src", m(1, 1, hard=1, hc=1, hv=10)),
        ds("utm_source", "nokey_src", m(1, 0)),
        ds("utm_source", "same_instant", m(2, 1, hard=1, hc=1, hv=2)),  # t8 p8, one user
        ds("utm_source", "tie_b", m(1, 1, hard=1, hc=1, hv=30)),
        # utm_medium: (none) = direct ones; cpc = p1 p4 p5 t7 t8 p8 t8b (keys u1 anon4 u5 u8)
        ds("utm_medium", "(none)", m(3, 2, hard=3, hc=2, hv=56)),
        ds("utm_medium", "cpc", m(7, 4, hard=4, hc=4, hv=132)),        # 100+20+10+2
        ds("utm_medium", "m_b", m(1, 1, hard=1, hc=1, hv=30)),
        # utm_campaign: c_edge = p1; the rest ns (keys u2 u3 anon4 u5 dev5 u8)
        ds("utm_campaign", NS, m(10, 6, hard=7, hc=6, hv=118)),
        ds("utm_campaign", "c_edge", m(1, 1, hard=1, hc=1, hv=100)),
        ds("utm_content", NS, total_all),
        ds("utm_term", NS, total_all),
        ds("device_type", NS, total_all),
        ds("country", "AT", m(1, 1, hard=1, hc=1, hv=100)),
        ds("country", "BE", m(1, 1, hard=1, hc=1, hv=50)),
        ds("country", "CH", m(1, 1, hard=1, hc=1, hv=30)),
        ds("country", "DK", m(1, 1, hard=1, hc=1, hv=20)),
        ds("country", "EE", m(1, 1, hard=1, hc=1, hv=10)),
        ds("country", "FI", m(1, 1, hard=1, hc=1, hv=5)),
        ds("country", "GR", m(1, 0)),
        ds("country", "HU", m(1, 0, hard=1, hc=0, hv=1)),
        ds("country", "IE", m(1, 1)),
        ds("country", "IT", m(1, 1, hard=1, hc=1, hv=2)),
        ds("country", "LU", m(1, 1)),
    ]
    assert_rows(read_table(out, "dimension_summary", D), expected)


def test_attribution_event_uses_only_own_fields(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2, "--attribution", "event")
    # no purchase carries its own utm_source -> all 8 purchases direct (7 keys, 218);
    # t7, t8, t8b keep their own dims
    assert_rows(read_table(out, "conversions_by_name", D),
                [cbn("purchase", "hard", *DIRECT[:3], 8, 7, 218)])
    rows = read_table(out, "campaign_daily", D)
    for c in ("AT", "BE", "CH", "DK", "EE", "FI", "HU", "IT"):
        assert dims_of(by_country(rows, c)) == DIRECT, c
    assert dims_of(by_country(rows, "IE")) == touch("same_instant", "cpc")
    assert manifest(out, D)["attribution"] == "event"


# =========================================================================== dimensions
# fixtures/dimensions, D = 2024-03-10, --lookback-days 1.
#   e1 (03-09) u1 touch: src1, medium '', campaign null, content ct1, term '', mobile, US
#   e2 u1 purchase 10.0, utm_source '' (not a touch), medium 'email', campaign 'own_camp',
#      device '', country null -> last touch e1: (src1, ns, ns, ct1, ns), ns, ns
#   e3 u2 touch src2, medium null, campaign '', content null, term kw, device null, country ''
#   e4 u3 phone_call, no utm, desktop DE -> DIRECT
#   e5 u2 newsletter_signup (soft), utm_source null, medium social, mobile US -> last touch e3
#   e6 u4 purchase 5.0, no utm, device '', country '' -> DIRECT, ns, ns

DIMS = FIXTURES / "dimensions"
L1 = ("--lookback-days", "1")
SRC1 = ("src1", NS, NS, "ct1", NS)
SRC2 = ("src2", NS, NS, NS, "kw")


def test_empty_and_null_dimensions_become_not_set(tmp_path):
    out = tmp_path / "out"
    run_ok(DIMS, out, *L1)
    assert_rows(read_table(out, "campaign_daily", D), [
        cd(SRC1, NS, NS, m(1, 1, hard=1, hc=1, hv=10)),        # e2
        cd(SRC2, NS, NS, m(1, 1)),                             # e3
        cd(SRC2, "mobile", "US", m(1, 1, soft=1, sc=1)),       # e5
        cd(DIRECT, "desktop", "DE", m(1, 1, hard=1, hc=1)),    # e4 phone_call, value 0
        cd(DIRECT, NS, NS, m(1, 1, hard=1, hc=1, hv=5)),       # e6
    ])


def test_empty_utm_source_is_not_a_touch(tmp_path):
    out = tmp_path / "out"
    run_ok(DIMS, out, *L1)
    rows = read_table(out, "campaign_daily", D)
    # e2 has utm_source '' and medium 'email': not a touch, so it takes e1's dims
    assert not any(r["utm_medium"] == "email" or r["utm_campaign"] == "own_camp" for r in rows)
    assert any(dims_of(r) == SRC1 for r in rows)


def test_conversion_without_touch_is_direct(tmp_path):
    out = tmp_path / "out"
    run_ok(DIMS, out, *L1)
    rows = [r for r in read_table(out, "campaign_daily", D) if r["utm_source"] == "(direct)"]
    # e4 and e6: '(direct)', '(none)', '(not set)' x3
    assert sorted((dims_of(r), r["device_type"], r["country"]) for r in rows) == [
        (DIRECT, "(not set)", "(not set)"), (DIRECT, "desktop", "DE")]


def test_device_and_country_come_from_the_event(tmp_path):
    out = tmp_path / "out"
    run_ok(DIMS, out, *L1)
    rows = read_table(out, "campaign_daily", D)
    # e2 is attributed to e1 (mobile, US) but keeps its own device '' and country null
    e2 = [r for r in rows if dims_of(r) == SRC1]
    assert [(r["device_type"], r["country"]) for r in e2] == [(NS, NS)]


def test_dimension_summary_full_grain(tmp_path):
    out = tmp_path / "out"
    run_ok(DIMS, out, *L1)
    # events e2..e6; keys u1 u2 u3 u4; hard e2 (10) e4 (0) e6 (5); soft e5 (u2)
    total = m(5, 4, hard=3, soft=1, hc=3, sc=1, hv=15)
    assert_rows(read_table(out, "dimension_summary", D), [
        ds("total", "(all)", total),
        ds("utm_source", "(direct)", m(2, 2, hard=2, hc=2, hv=5)),       # e4 e6
        ds("utm_source", "src1", m(1, 1, hard=1, hc=1, hv=10)),          # e2
        ds("utm_source", "src2", m(2, 1, soft=1, sc=1)),                 # e3 e5 (u2)
        ds("utm_medium", "(none)", m(2, 2, hard=2, hc=2, hv=5)),         # e4 e6
        ds("utm_medium", NS, m(3, 2, hard=1, soft=1, hc=1, sc=1, hv=10)),  # e2 e3 e5
        ds("utm_campaign", NS, total),
        ds("utm_content", NS, m(4, 3, hard=2, soft=1, hc=2, sc=1, hv=5)),  # e3 e4 e5 e6
        ds("utm_content", "ct1", m(1, 1, hard=1, hc=1, hv=10)),          # e2
        ds("utm_term", NS, m(3, 3, hard=3, hc=3, hv=15)),                # e2 e4 e6
        ds("utm_term", "kw", m(2, 1, soft=1, sc=1)),                     # e3 e5
        ds("device_type", NS, m(3, 3, hard=2, hc=2, hv=15)),             # e2 e3 e6
        ds("device_type", "desktop", m(1, 1, hard=1, hc=1)),             # e4
        ds("device_type", "mobile", m(1, 1, soft=1, sc=1)),              # e5
        ds("country", NS, m(3, 3, hard=2, hc=2, hv=15)),                 # e2 e3 e6
        ds("country", "DE", m(1, 1, hard=1, hc=1)),                      # e4
        ds("country", "US", m(1, 1, soft=1, sc=1)),                      # e5
    ])


def test_attribution_event_ignores_earlier_touches(tmp_path):
    out = tmp_path / "out"
    run_ok(DIMS, out, *L1, "--attribution", "event")
    # only e3 is a touch; e2 (utm_source '') and e5 (null) are direct, e2's medium ignored
    assert_rows(read_table(out, "campaign_daily", D), [
        cd(DIRECT, NS, NS, m(2, 2, hard=2, hc=2, hv=15)),     # e2 e6
        cd(DIRECT, "desktop", "DE", m(1, 1, hard=1, hc=1)),   # e4
        cd(DIRECT, "mobile", "US", m(1, 1, soft=1, sc=1)),    # e5
        cd(SRC2, NS, NS, m(1, 1)),                            # e3
    ])


# =========================================================================== SPEC 3.6 assisted
# fixtures/assisted, D = 2024-03-10, --lookback-days 2, default rules, no utm (all DIRECT).
#   s5 u5 video_complete 03-08T12:00:00 | s6 u6 wishlist_add 03-08T11:59:59 | s1 u1 signup 03-09T10:00
#   events of D (country): h1 u1 purchase 10:00 10 AT | s2 u2 social_like 11:00 BE |
#     h2 u2 purchase 11:00 20 CH | s3 u3 email_signup 09:00 DK | h4 u4 purchase 10:00 40 EE |
#     h5 u5 demo_request 12:00 FI | h6 u6 consultation_request 12:00 GR |
#     h7 u7 phone_call 08:00 HU | s7 u7 social_share 09:00 IE | s8 (no key) social_follow 01:00 IT |
#     h8 (no key) purchase 02:00 1 LU

ASSISTED = FIXTURES / "assisted"

ASSISTED_CAMPAIGN_DAILY = [
    cd(DIRECT, NS, "AT", m(1, 1, hard=1, hc=1, hv=10, assisted=1)),  # s1 one day before
    cd(DIRECT, NS, "BE", m(1, 1, soft=1, sc=1)),
    cd(DIRECT, NS, "CH", m(1, 1, hard=1, hc=1, hv=20)),              # s2 at the same instant
    cd(DIRECT, NS, "DK", m(1, 1, soft=1, sc=1)),
    cd(DIRECT, NS, "EE", m(1, 1, hard=1, hc=1, hv=40)),              # s3 is u3's, not u4's
    cd(DIRECT, NS, "FI", m(1, 1, hard=1, hc=1, assisted=1)),         # s5 exactly 2 days before
    cd(DIRECT, NS, "GR", m(1, 1, hard=1, hc=1)),                     # s6 2 days + 1 s before
    cd(DIRECT, NS, "HU", m(1, 1, hard=1, hc=1)),                     # s7 comes after
    cd(DIRECT, NS, "IE", m(1, 1, soft=1, sc=1)),
    cd(DIRECT, NS, "IT", m(1, 0, soft=1, sc=0)),                     # no key
    cd(DIRECT, NS, "LU", m(1, 0, hard=1, hc=0, hv=1)),               # no key: not assisted
]


def test_assisted_campaign_daily(tmp_path):
    out = tmp_path / "out"
    run_ok(ASSISTED, out, *L2)
    assert_rows(read_table(out, "campaign_daily", D), ASSISTED_CAMPAIGN_DAILY)


def test_assisted_requires_soft_strictly_before(tmp_path):
    out = tmp_path / "out"
    run_ok(ASSISTED, out, *L2)
    rows = read_table(out, "campaign_daily", D)
    assert by_country(rows, "AT")["assisted_hard_conversions"] == 1  # soft a day before
    assert by_country(rows, "CH")["assisted_hard_conversions"] == 0  # soft at the same instant
    assert by_country(rows, "HU")["assisted_hard_conversions"] == 0  # soft after the hard


def test_soft_exactly_lookback_days_before_assists(tmp_path):
    out = tmp_path / "out"
    run_ok(ASSISTED, out, *L2)
    rows = read_table(out, "campaign_daily", D)
    assert by_country(rows, "FI")["assisted_hard_conversions"] == 1  # s5: exactly 2 days
    assert by_country(rows, "GR")["assisted_hard_conversions"] == 0  # s6: 2 days + 1 s


def test_soft_of_another_user_does_not_assist(tmp_path):
    out = tmp_path / "out"
    run_ok(ASSISTED, out, *L2)
    rows = read_table(out, "campaign_daily", D)
    assert by_country(rows, "EE")["assisted_hard_conversions"] == 0  # s3 is u3's, h4 is u4's
    # no user key on either side (s8, h8): no key "has" a soft conversion
    assert by_country(rows, "LU")["assisted_hard_conversions"] == 0


def test_default_rules_classify_spec_event_types(tmp_path):
    out = tmp_path / "out"
    run_ok(ASSISTED, out, *L2)
    # events of D: 11; keys u1..u7 = 7; hard h1 h2 h4 h5 h6 h7 h8 = 7 by u1 u2 u4 u5 u6 u7 (6)
    # soft s2 s3 s7 s8 = 4 by u2 u3 u7 (3); hv = 10+20+40+1 = 71; assisted h1, h5 = 2
    total = dim_rows(read_table(out, "dimension_summary", D), "total")
    assert_rows(total, [ds("total", "(all)",
                           m(11, 7, hard=7, soft=4, hc=6, sc=3, hv=71, assisted=2))])
    assert_rows(read_table(out, "conversions_by_name", D), [
        cbn("demo_request", "hard", *DIRECT[:3], 2, 2, 0),       # h5 demo, h6 consultation
        cbn("email_signup", "soft", *DIRECT[:3], 1, 1, 0),       # s3 (s1 is not of D)
        cbn("phone_call", "hard", *DIRECT[:3], 1, 1, 0),         # h7
        cbn("purchase", "hard", *DIRECT[:3], 4, 3, 71),          # h1 h2 h4 h8 (h8 no key)
        cbn("social_engagement", "soft", *DIRECT[:3], 3, 2, 0),  # s2 s7 s8 (s8 no key)
    ])


# =========================================================================== SPEC 2 rules
# fixtures/rules_custom, D = 2024-03-10, default lookback, rules fixtures/rules_custom/rules.toml:
#   big_purchase hard  purchase AND revenue >= 100, value revenue * 2
#   purchase     hard  purchase, value revenue
#   loyal_signup soft  signup AND loyalty_tier = 'gold', value 7
#   any_signup   soft  signup, no value
# part-a (revenue int64, loyalty_tier, desktop): r1 u1 purchase 150 | r2 u2 purchase 40 |
#   r3 u3 signup gold | r4 u4 signup silver
# part-b (revenue double, no loyalty_tier, mobile, columns reversed): r5 u5 purchase 99.5 |
#   r6 u6 purchase 100.25 | r7 u7 signup | r8 u8 purchase null
# part-c (no revenue, no device_type): r9 u9 purchase | r10 u1 page_view

RULES_DIR = FIXTURES / "rules_custom"
RULES = RULES_DIR / "rules.toml"


def test_first_matching_rule_wins(tmp_path):
    out = tmp_path / "out"
    run_ok(RULES_DIR, out, "--rules", RULES)
    assert_rows(read_table(out, "conversions_by_name", D), [
        # r4 (silver), r7 (loyalty_tier null -> NULL -> false for loyal_signup)
        cbn("any_signup", "soft", *DIRECT[:3], 2, 2, 0),
        # r1 150*2 = 300, r6 100.25*2 = 200.5 (both also match `purchase`: first rule wins)
        cbn("big_purchase", "hard", *DIRECT[:3], 2, 2, 500.5),
        # r3 (also matches any_signup)
        cbn("loyal_signup", "soft", *DIRECT[:3], 1, 1, 7),
        # r2 40, r5 99.5, r8 null -> 0, r9 no revenue column -> 0
        cbn("purchase", "hard", *DIRECT[:3], 4, 4, 139.5),
    ])


def test_rule_value_expression_and_null_value_is_zero(tmp_path):
    out = tmp_path / "out"
    run_ok(RULES_DIR, out, "--rules", RULES)
    # hv = 300 + 40 + 99.5 + 200.5 + 0 (r8) + 0 (r9) = 640; sv = 7 (r3) + 0 + 0
    # events 10, keys u1..u9 = 9; hard r1 r2 r5 r6 r8 r9 = 6 by 6; soft r3 r4 r7 = 3 by 3
    total = dim_rows(read_table(out, "dimension_summary", D), "total")
    assert_rows(total, [ds("total", "(all)", m(10, 9, hard=6, soft=3, hc=6, sc=3,
                                               hv=640, sv=7))])


def test_schema_drift_int_vs_double_revenue_and_missing_columns(tmp_path):
    out = tmp_path / "out"
    run_ok(RULES_DIR, out, "--rules", RULES)
    # campaign_daily by device (country null everywhere -> ns):
    #   desktop r1..r4: hard r1 r2 (300+40), soft r3 r4 (7+0)
    #   mobile  r5..r8: hard r5 r6 r8 (99.5+200.5+0), soft r7
    #   ns      r9 r10 (part-c has no device_type): hard r9 (0); users u9, u1
    assert_rows(read_table(out, "campaign_daily", D), [
        cd(DIRECT, "desktop", NS, m(4, 4, hard=2, soft=2, hc=2, sc=2, hv=340, sv=7)),
        cd(DIRECT, "mobile", NS, m(4, 4, hard=3, soft=1, hc=3, sc=1, hv=300)),
        cd(DIRECT, NS, NS, m(2, 2, hard=1, hc=1)),
    ])


def test_rules_hash_identifies_the_rules(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_ok(RULES_DIR, a, "--rules", RULES)
    run_ok(RULES_DIR, b, "--rules", RULES)
    changed = tmp_path / "rules2.toml"
    changed.write_text(RULES.read_text().replace("revenue * 2", "revenue * 3"))
    run_ok(RULES_DIR, c, "--rules", changed)
    ha, hb, hc = (manifest(x, D)["rules_hash"] for x in (a, b, c))
    assert ha == hb
    assert ha != hc


def _rules_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "bad_rules.toml"
    p.write_text(body)
    return p


GOOD_RULE = '''
[[conversion]]
name = "purchase"
kind = "hard"
when = "event_type = 'purchase'"
value = "revenue"
'''


def test_rule_naming_missing_column_exits_2(tmp_path):
    rules = _rules_file(tmp_path, GOOD_RULE + '''
[[conversion]]
name = "uses_missing_column"
kind = "soft"
when = "no_such_column = 'x'"
''')
    out = tmp_path / "out"
    r = run_convmart("run", "--input", LOOKBACK, "--output", out, "--date", D, "--rules", rules)
    assert r.returncode == 2, r.stderr
    assert "uses_missing_column" in r.stderr
    assert not (out / "_runs").exists()


def test_duplicate_rule_names_exit_2(tmp_path):
    rules = _rules_file(tmp_path, GOOD_RULE + '''
[[conversion]]
name = "purchase"
kind = "soft"
when = "event_type = 'newsletter_signup'"
''')
    out = tmp_path / "out"
    r = run_convmart("run", "--input", LOOKBACK, "--output", out, "--date", D, "--rules", rules)
    assert r.returncode == 2, r.stderr
    assert "purchase" in r.stderr
    assert not (out / "_runs").exists()


def test_semicolon_in_when_exits_2(tmp_path):
    rules = _rules_file(tmp_path, GOOD_RULE + '''
[[conversion]]
name = "sneaky_rule"
kind = "hard"
when = "event_type = 'phone_call'; SELECT 1"
''')
    out = tmp_path / "out"
    r = run_convmart("run", "--input", LOOKBACK, "--output", out, "--date", D, "--rules", rules)
    assert r.returncode == 2, r.stderr
    assert "sneaky_rule" in r.stderr
    assert not (out / "_runs").exists()


@pytest.mark.parametrize("body,name", [
    (GOOD_RULE + GOOD_RULE, "purchase"),
    (GOOD_RULE + '[[conversion]]\nname = "semi_rule"\nkind = "hard"\n'
     'when = "event_type = \'x\'; DROP TABLE events"\n', "semi_rule"),
])
def test_validate_reports_bad_rules_with_exit_2(tmp_path, body, name):
    r = run_convmart("validate", "--rules", _rules_file(tmp_path, body))
    assert r.returncode == 2, r.stderr
    assert name in r.stderr


def test_validate_accepts_fixture_rules_against_input(tmp_path):
    r = run_convmart("validate", "--rules", RULES, "--input", RULES_DIR, "--date", D)
    assert r.returncode == 0, r.stderr


# =========================================================================== SPEC 1 timestamps
# fixtures/timestamps, D = 2024-03-10, --lookback-days 1. Instants are UTC.
#   03-09 ns_naive: te3 u3 09T12:00:00 touch edge_ns | te4 u4 09T11:59:59.999999 touch edge_ns_out
#   s_naive (timestamp[s], stored as ms): tt1 u1 08:00:00 touch from_s AT | p4 u4 12:00:00 4.0 BE
#   ms_naive: tt2 u1 08:00:00.500 touch from_ms CH | dup1 u2 09:00:00.001 DK
#   us_utc:   p1 u1 08:00:00.750 1.0 EE | dup1 u2 09:00:00.000999 FI
#   ns_berlin (tz Europe/Berlin): tt3 u1 08:00:00.900 UTC touch from_ns_berlin GR
#   int96:    p2 u1 08:00:01 2.0 HU | p3 u3 12:00:00 3.0 IE

TS = FIXTURES / "timestamps"


def test_mixed_timestamp_units_and_zones(tmp_path):
    out = tmp_path / "out"
    run_ok(TS, out, *L1)
    rows = read_table(out, "campaign_daily", D)
    # p1 (.750): latest touch at or before is tt2 (.500); tt3 (.900) is after
    assert dims_of(by_country(rows, "EE")) == touch("from_ms")
    # p2 (08:00:01): latest touch is tt3 (08:00:00.900 UTC, a Berlin-zoned column)
    assert dims_of(by_country(rows, "HU")) == touch("from_ns_berlin")
    # p3 (INT96 12:00:00): te3 exactly 1 day before (ns naive) -> attributed
    assert dims_of(by_country(rows, "IE")) == touch("edge_ns")
    # p4 (seconds file 12:00:00): te4 is 1 day + 1 microsecond before -> direct
    assert dims_of(by_country(rows, "BE")) == DIRECT
    # dup1: the us copy (09:00:00.000999) is 1 microsecond earlier than the ms copy
    countries = {r["country"] for r in rows}
    assert "FI" in countries and "DK" not in countries
    assert_rows(read_table(out, "conversions_by_name", D), [
        cbn("purchase", "hard", *DIRECT[:3], 1, 1, 4),
        cbn("purchase", "hard", "edge_ns", NS, NS, 1, 1, 3),
        cbn("purchase", "hard", "from_ms", NS, NS, 1, 1, 1),
        cbn("purchase", "hard", "from_ns_berlin", NS, NS, 1, 1, 2),
    ])
    # events tt1 p4 tt2 dup1 p1 tt3 p2 p3 = 8; keys u1 u2 u3 u4; purchases p1..p4 by u1 u3 u4
    total = dim_rows(read_table(out, "dimension_summary", D), "total")
    assert_rows(total, [ds("total", "(all)", m(8, 4, hard=4, hc=3, hv=10))])
    man = manifest(out, D)
    assert man["rows_read"] == 11          # 2 + 2 + 2 + 2 + 1 + 2
    assert man["duplicates_dropped"] == 1  # dup1


# =========================================================================== SPEC 3.1 validity
# fixtures/rejected, D = 2024-03-10, --lookback-days 1.
#   03-09: p9 (event_type null: rejected, but not of D) | v9 u9 page_view (valid)
#   part-a (+ page_url): (null id, null type, null time) ua /a1 | ('' id) purchase ub 3.5 /a2 |
#     x3 null type, null time, uc, utm src_x3 | x4 type '' mobile NL | x5 null time, ue 12.25 |
#     ok1 u1 purchase 10:00 10.0 /buy | ok2 u1 newsletter_signup 09:00
#   part-b (revenue int64, no device_type, no page_url): ok1 null time u1 10 |
#     x7 null type u7 5 | ok3 u2 page_view 08:00

REJ = FIXTURES / "rejected"


def _t(h, mi=0):
    return datetime(2024, 3, 10, h, mi, tzinfo=timezone.utc)


def _rej(reason, **cols):
    row = {c: None for c in SPEC_INPUT}
    row["page_url"] = None
    row.update(cols)
    row["reject_reason"] = reason
    return row


REJECTED_ROWS = [
    _rej("missing_event_id", user_id="ua", page_url="/a1"),  # id, type, time all null: id first
    _rej("missing_event_id", event_id="", event_time=_t(1), event_type="purchase", user_id="ub",
         revenue=3.5, page_url="/a2"),
    _rej("missing_event_type", event_id="x3", user_id="uc", utm_source="src_x3"),  # type before time
    _rej("missing_event_type", event_id="x4", event_time=_t(2), event_type="", device_type="mobile",
         country="NL"),
    _rej("missing_event_time", event_id="x5", event_type="purchase", user_id="ue", revenue=12.25),
    _rej("missing_event_time", event_id="ok1", event_type="purchase", user_id="u1", revenue=10.0),
    _rej("missing_event_type", event_id="x7", event_time=_t(3), user_id="u7", revenue=5.0),
]


def test_rejected_reasons_in_order(tmp_path):
    out = tmp_path / "out"
    run_ok(REJ, out, *L1)
    assert_rows(read_table(out, "rejected_events", D), REJECTED_ROWS)


def test_rejected_events_columns_and_types(tmp_path):
    out = tmp_path / "out"
    run_ok(REJ, out, *L1)
    t = read_arrow(out, "rejected_events", D)
    assert t is not None
    # SPEC columns in SPEC order, then other input columns, then reject_reason
    assert t.schema.names == SPEC_INPUT + ["page_url", "reject_reason"]
    for f in t.schema:
        if f.name == "event_time":
            assert f.type == pa.timestamp("us", tz="UTC"), f
        elif f.name == "revenue":
            assert f.type == pa.float64(), f
        else:
            assert f.type == pa.string(), f


def test_rejected_events_hold_only_partition_d(tmp_path):
    out = tmp_path / "out"
    run_ok(REJ, out, *L1)
    ids = {r["event_id"] for r in read_table(out, "rejected_events", D)}
    assert "p9" not in ids  # rejected in 03-09, a lookback partition


def test_rejected_rows_take_part_in_nothing_else(tmp_path):
    out = tmp_path / "out"
    run_ok(REJ, out, *L1)
    # events of D: ok1 (purchase 10, u1), ok2 (signup u1, 09:00 < 10:00 -> assists ok1), ok3 (u2)
    # the rejected ok1 copy (no time) is neither an event nor a duplicate
    total = dim_rows(read_table(out, "dimension_summary", D), "total")
    assert_rows(total, [ds("total", "(all)",
                           m(3, 2, hard=1, soft=1, hc=1, sc=1, hv=10, assisted=1))])
    man = manifest(out, D)
    assert man["rows_read"] == 12          # 2 (03-09) + 7 + 3
    assert man["duplicates_dropped"] == 0  # valid: v9 ok1 ok2 ok3, all survive
    # SPEC does not say whether the manifest counts rejects of D only or of all files read
    # (p9 in 03-09 is missing_event_type); accept either reading.
    assert man["rejected_rows"] in (
        {"missing_event_id": 2, "missing_event_type": 3, "missing_event_time": 2},
        {"missing_event_id": 2, "missing_event_type": 4, "missing_event_time": 2},
    )


def test_total_row_present_when_no_valid_events(tmp_path):
    inp = tmp_path / "input" / f"event_date={D}"
    inp.mkdir(parents=True)
    pq.write_table(pa.table({
        "event_id": pa.array(["z1"]), "event_time": pa.array([None], pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(["purchase"])}), inp / "part-0.parquet")
    out = tmp_path / "out"
    run_ok(tmp_path / "input", out, *L1)
    assert_rows(read_table(out, "dimension_summary", D), [ds("total", "(all)", m(0, 0))])
    assert read_table(out, "campaign_daily", D) == []
    assert [r["reject_reason"] for r in read_table(out, "rejected_events", D)] == [
        "missing_event_time"]


# =========================================================================== SPEC 4 outputs

CD_SCHEMA = [(c, pa.string()) for c in GRAIN]
DS_SCHEMA = [("dimension", pa.string()), ("dimension_value", pa.string())]
METRIC_TYPES = [
    ("events", pa.int64()), ("users", pa.int64()),
    ("hard_conversions", pa.int64()), ("soft_conversions", pa.int64()),
    ("hard_converters", pa.int64()), ("soft_converters", pa.int64()),
    ("hard_value", pa.float64()), ("soft_value", pa.float64()),
    ("assisted_hard_conversions", pa.int64()),
    ("hard_conversion_rate", pa.float64()), ("soft_conversion_rate", pa.float64()),
]
CBN_SCHEMA = [(c, pa.string()) for c in CBN_GRAIN] + [
    ("conversions", pa.int64()), ("converters", pa.int64()), ("value", pa.float64())]


def test_output_columns_and_types(tmp_path):
    out = tmp_path / "out"
    run_ok(REJ, out, *L1)
    for table, expected in [("campaign_daily", CD_SCHEMA + METRIC_TYPES),
                            ("dimension_summary", DS_SCHEMA + METRIC_TYPES),
                            ("conversions_by_name", CBN_SCHEMA)]:
        for f in table_files(out, table, D):
            schema = pq.read_schema(f)
            assert [(x.name, x.type) for x in schema] == expected, f"{table}: {schema}"


def test_output_layout_part_files_without_partition_column(tmp_path):
    out = tmp_path / "out"
    run_ok(REJ, out, *L1)
    for table in TABLES:
        d = table_dir(out, table, D)
        names = sorted(p.name for p in d.iterdir())
        assert names, table
        assert all(re.fullmatch(r"part-.*\.parquet", n) for n in names), names
        for n in names:
            pf = pq.ParquetFile(d / n)
            assert "event_date" not in pf.schema_arrow.names, f"{table}/{n}"
            md = pf.metadata
            assert md.num_rows > 0, f"{table}/{n}"
            for rg in range(md.num_row_groups):
                for ci in range(md.num_columns):
                    col = md.row_group(rg).column(ci)
                    assert col.compression == "ZSTD", f"{table}/{n}: {col.path_in_schema}"
                    assert col.is_stats_set, f"{table}/{n}: no statistics for {col.path_in_schema}"


def test_output_sort_order(tmp_path):
    out = tmp_path / "out"
    run_ok(LOOKBACK, out, *L2)
    cd_rows = read_table(out, "campaign_daily", D)
    assert cd_rows == sorted(cd_rows, key=lambda r: [r[c] for c in GRAIN])
    ds_rows = read_table(out, "dimension_summary", D)
    assert ds_rows == sorted(ds_rows, key=lambda r: (DIM_ORDER.index(r["dimension"]),
                                                    r["dimension_value"]))
    cbn_rows = read_table(out, "conversions_by_name", D)
    assert cbn_rows == sorted(cbn_rows, key=lambda r: [r[c] for c in CBN_GRAIN])


def test_rerun_replaces_partition_with_one_runs_files(tmp_path):
    out = tmp_path / "out"
    run_ok(FIXTURES / "dedup", out, *L2)
    first = manifest(out, D)
    run_ok(FIXTURES / "dedup", out, *L2)
    second = manifest(out, D)
    assert first["run_id"] != second["run_id"]
    for table in TABLES:
        listed = sorted(f["path"] for f in second["tables"][table]["files"])
        on_disk = sorted(str(p.relative_to(out)) for p in table_dir(out, table, D).iterdir())
        assert on_disk == listed, table
    # the content is that of one run, not two
    assert_rows(read_table(out, "campaign_daily", D), DEDUP_D_CAMPAIGN_DAILY)


def test_range_run_equals_per_date_runs(tmp_path):
    dates = ["2024-03-08", "2024-03-09", "2024-03-10"]
    ranged = tmp_path / "ranged"
    run_ok(FIXTURES / "dedup", ranged, *L2, "--end-date", dates[-1], date=dates[0])
    for d in dates:
        single = tmp_path / f"single-{d}"
        run_ok(FIXTURES / "dedup", single, *L2, date=d)
        manifest(ranged, d)  # each date of the range is committed
        for table in TABLES:
            assert_rows(read_table(ranged, table, d), read_table(single, table, d))
    # and by hand: 03-09 keeps d7's 03-09 copy (the earlier 03-10 copy is not read for 03-09)
    assert_rows(read_table(ranged, "campaign_daily", "2024-03-09"), [cd(DIRECT, NS, "FR", m(3, 3))])
    assert_rows(read_table(ranged, "campaign_daily", D), DEDUP_D_CAMPAIGN_DAILY)


def test_input_as_file_url_equals_plain_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_ok(LOOKBACK, a, *L2)
    run_ok((LOOKBACK).as_uri(), b, *L2)
    for table in SUMMARY_TABLES:
        assert_rows(read_table(b, table, D), read_table(a, table, D))


# =========================================================================== SPEC 6 failures

def test_missing_partition_exits_3_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = run_convmart("run", "--input", FIXTURES / "dedup", "--output", out, "--date", "2024-03-11")
    assert r.returncode == 3, r.stderr
    assert "2024-03-11" in r.stderr
    assert output_files(out) == []


def test_bad_attribution_argument_exits_2(tmp_path):
    r = run_convmart("run", "--input", LOOKBACK, "--output", tmp_path / "out", "--date", D,
                     "--attribution", "first_touch")
    assert r.returncode == 2, r.stderr
    assert "attribution" in r.stderr


def test_corrupt_parquet_exits_65_naming_file_and_keeps_previous_output(tmp_path):
    inp = copy_fixture("dedup", tmp_path)
    out = tmp_path / "out"
    run_ok(inp, out, *L2)
    before = snapshot(out)
    (inp / f"event_date={D}" / "zz-corrupt.parquet").write_bytes(b"this is not parquet\n" * 10)
    r = run_convmart("run", "--input", inp, "--output", out, "--date", D, *L2)
    assert r.returncode == 65, r.stderr
    assert "zz-corrupt.parquet" in r.stderr
    # every file the previous run committed is still there, byte for byte
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert_rows(read_table(out, "campaign_daily", D), DEDUP_D_CAMPAIGN_DAILY)
    assert manifest(out, D) == json.loads(before[f"_runs/event_date={D}.json"])


def test_missing_required_column_exits_65_naming_file(tmp_path):
    inp = copy_fixture("dedup", tmp_path)
    pq.write_table(pa.table({
        "event_id": pa.array(["q1"]),
        "event_time": pa.array([0], pa.timestamp("us", tz="UTC")),
        # no event_type
        "user_id": pa.array(["u1"]),
    }), inp / f"event_date={D}" / "no-type.parquet")
    out = tmp_path / "out"
    r = run_convmart("run", "--input", inp, "--output", out, "--date", D, *L2)
    assert r.returncode == 65, r.stderr
    assert "no-type.parquet" in r.stderr
    assert not (out / "_runs").exists()


def test_non_parquet_and_hidden_files_are_ignored(tmp_path):
    inp = copy_fixture("dedup", tmp_path)
    part = inp / f"event_date={D}"
    # none of these is valid Parquet: reading any of them would be exit 65
    (part / "_SUCCESS").write_bytes(b"")
    (part / "_temporary.parquet").write_bytes(b"not parquet")
    (part / ".part-a.parquet.crc").write_bytes(b"crc")
    (part / ".hidden.parquet").write_bytes(b"not parquet")
    (part / "notes.txt").write_text("not input")
    out = tmp_path / "out"
    run_ok(inp, out, *L2)
    assert_rows(read_table(out, "campaign_daily", D), DEDUP_D_CAMPAIGN_DAILY)
    assert len(manifest(out, D)["input_files"]) == 4


def test_attribution_flag_accepts_spec_spelling_last_touch(tmp_path):
    # SPEC 5 spells the values `last_touch|event`; the default is last_touch
    a, b = tmp_path / "a", tmp_path / "b"
    run_ok(LOOKBACK, a, *L2)
    run_ok(LOOKBACK, b, *L2, "--attribution", "last_touch")
    assert_rows(read_table(b, "campaign_daily", D), LOOKBACK_CAMPAIGN_DAILY)
    assert manifest(b, D)["attribution"] == "last_touch"


# =========================================================================== small inline inputs
# A few rules need one odd file; these inputs are written by the test itself.

def _write(path: Path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _us(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()) * 1_000_000


def test_revenue_decimal_and_float_types(tmp_path):
    # SPEC 1: revenue may be double, float, decimal or integer
    inp = tmp_path / "input" / f"event_date={D}"
    ts = pa.timestamp("us", tz="UTC")
    _write(inp / "dec.parquet", {
        "event_id": ["a1", "a2"], "event_time": pa.array([_us("2024-03-10T01:00:00")] * 2, ts),
        "event_type": ["purchase", "purchase"], "user_id": ["u1", "u2"],
        "revenue": pa.array([Decimal("12.25"),
                             Decimal("0.75")], pa.decimal128(10, 2))})
    _write(inp / "f32.parquet", {
        "event_id": ["b1"], "event_time": pa.array([_us("2024-03-10T02:00:00")], ts),
        "event_type": ["purchase"], "user_id": ["u3"],
        "revenue": pa.array([2.5], pa.float32())})
    out = tmp_path / "out"
    run_ok(tmp_path / "input", out, *L1)
    # 12.25 + 0.75 + 2.5 = 15.5, three purchases by three users
    assert_rows(read_table(out, "conversions_by_name", D),
                [cbn("purchase", "hard", *DIRECT[:3], 3, 3, 15.5)])


def test_empty_user_id_is_one_shared_user_key(tmp_path):
    # docs/contract-notes.md: the key is literally coalesce(user_id, anonymous_id),
    # so '' is a key (not null): two events with user_id '' are one user, and the
    # anonymous_id of such a row is not used.
    inp = tmp_path / "input" / f"event_date={D}"
    ts = pa.timestamp("us", tz="UTC")
    _write(inp / "part-0.parquet", {
        "event_id": ["k1", "k2", "k3"],
        "event_time": pa.array([_us("2024-03-10T01:00:00"), _us("2024-03-10T02:00:00"),
                                _us("2024-03-10T03:00:00")], ts),
        "event_type": ["page_view", "purchase", "purchase"],
        "user_id": ["", "", None], "anonymous_id": ["dev1", "dev2", None],
        "utm_source": ["src_k1", None, None]})
    out = tmp_path / "out"
    run_ok(tmp_path / "input", out, *L1)
    # k2 (key '') takes k1's touch (key ''); k3 has no key: direct, not a user
    assert_rows(read_table(out, "conversions_by_name", D), [
        cbn("purchase", "hard", *DIRECT[:3], 1, 0, 0),
        cbn("purchase", "hard", "src_k1", NS, NS, 1, 1, 0),
    ])
    total = dim_rows(read_table(out, "dimension_summary", D), "total")
    assert_rows(total, [ds("total", "(all)", m(3, 1, hard=2, hc=1))])


def test_only_partitions_d_minus_l_to_d_are_read(tmp_path):
    # SPEC 3: the job reads partitions D-L .. D. With L = 2 and D = 03-10 a touch filed
    # in partition 03-07 is not read, even though its event_time (03-09) is in range.
    root = tmp_path / "input"
    ts = pa.timestamp("us", tz="UTC")
    _write(root / "event_date=2024-03-07" / "part-0.parquet", {
        "event_id": ["old"], "event_time": pa.array([_us("2024-03-09T00:00:00")], ts),
        "event_type": ["page_view"], "user_id": ["u1"], "utm_source": ["too_old_partition"]})
    _write(root / f"event_date={D}" / "part-0.parquet", {
        "event_id": ["buy"], "event_time": pa.array([_us("2024-03-10T00:00:00")], ts),
        "event_type": ["purchase"], "user_id": ["u1"], "utm_source": [None]})
    out = tmp_path / "out"
    run_ok(root, out, *L2)
    assert_rows(read_table(out, "conversions_by_name", D),
                [cbn("purchase", "hard", *DIRECT[:3], 1, 1, 0)])
    man = manifest(out, D)
    assert [f["path"].split("/")[-2] for f in man["input_files"]] == [f"event_date={D}"]
    assert man["rows_read"] == 1


def test_rule_value_naming_missing_column_exits_2(tmp_path):
    rules = _rules_file(tmp_path, GOOD_RULE + '''
[[conversion]]
name = "bad_value_rule"
kind = "hard"
when = "event_type = 'phone_call'"
value = "call_minutes * 2"
''')
    r = run_convmart("run", "--input", LOOKBACK, "--output", tmp_path / "out", "--date", D,
                     "--rules", rules)
    assert r.returncode == 2, r.stderr
    assert "bad_value_rule" in r.stderr
    r = run_convmart("validate", "--rules", rules, "--input", LOOKBACK, "--date", D)
    assert r.returncode == 2, r.stderr
    assert "bad_value_rule" in r.stderr
