"""docs/tables.md, executed: its setup block and its five example queries run in
DuckDB against tables that `convmart run` wrote from `convmart generate` data,
and the aggregation rules it states hold on that data.

The SQL is taken from the document itself (```sql blocks starting with
`-- setup` or `-- query: NAME`), so the page cannot drift from what works.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import pytest

from conftest import REPO, run_convmart

DOC = REPO / "docs" / "tables.md"
DOC_OUTPUT = "/data/convmart/output"  # the placeholder path in the setup block
QUERIES = (
    "top_campaigns_by_hard_conversions",
    "assist_rate_by_source",
    "device_split",
    "week_over_week_trend",
    "intent_not_yet_converted",
)
# Two complete ISO weeks (Mon 2024-05-06 .. Sun 2024-05-19) and 5 days of lookback before.
GEN_START, GEN_DAYS, EVENTS = "2024-05-01", 19, 500
FIRST, LAST, LOOKBACK = "2024-05-06", "2024-05-19", 5
STRAY_DATE = LAST


def _blocks() -> dict[str, str]:
    text = DOC.read_text()
    out = {}
    for block in re.findall(r"```sql\n(.*?)```", text, re.S):
        m = re.match(r"-- (setup|query: (\w+))\n", block)
        if m:
            out[m.group(2) or "setup"] = block
    return out


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tables_doc")
    gen = run_convmart("generate", "--output", root / "input", "--start-date", GEN_START,
                       "--days", GEN_DAYS, "--events-per-day", EVENTS, "--seed", 5)
    assert gen.returncode == 0, gen.stderr[-3000:]
    run = run_convmart("run", "--input", root / "input", "--output", root / "output",
                       "--date", FIRST, "--end-date", LAST, "--lookback-days", LOOKBACK,
                       timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = root / "output"
    # A file that no manifest lists, as a run that failed half-way can leave behind.
    part = out / "campaign_daily" / f"event_date={STRAY_DATE}"
    committed = sorted(part.glob("*.parquet"))
    assert committed, f"no campaign_daily file for {STRAY_DATE}"
    shutil.copy(committed[0], part / "part-19700101T000000Z-deadbeef-00000.parquet")
    return out


@pytest.fixture(scope="module")
def con(output):
    blocks = _blocks()
    assert "setup" in blocks, "docs/tables.md lost its `-- setup` block"
    assert DOC_OUTPUT in blocks["setup"]
    c = duckdb.connect()
    c.execute(blocks["setup"].replace(DOC_OUTPUT, str(output)))
    return c


def _rows(con, sql: str) -> list[dict]:
    cur = con.execute(sql.strip().rstrip(";"))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def test_doc_has_the_five_queries():
    assert sorted(q for q in _blocks() if q != "setup") == sorted(QUERIES)


def test_setup_reads_only_committed_files(con, output):
    committed = con.execute(
        "SELECT count(*) FROM campaign_daily WHERE event_date = ?", [STRAY_DATE]).fetchone()[0]
    globbed = con.execute(
        f"SELECT count(*) FROM read_parquet('{output}/campaign_daily/*/*.parquet', hive_partitioning = true) "
        "WHERE event_date = ?", [STRAY_DATE]).fetchone()[0]
    assert committed > 0 and globbed == 2 * committed
    dates = con.execute("SELECT count(DISTINCT event_date), min(event_date)::VARCHAR, max(event_date)::VARCHAR "
                        "FROM dimension_summary").fetchone()
    assert dates == (14, FIRST, LAST)
    assert con.execute("SELECT typeof(event_date) FROM campaign_daily LIMIT 1").fetchone()[0] == "DATE"


def test_manifest_as_a_table(con, output):
    rows = _rows(con, f"SELECT event_date, run_id, rows_read, duplicates_dropped, tables.campaign_daily.rows AS n "
                      f"FROM read_json('{output}/_runs/event_date=*.json')")
    assert len(rows) == 14 and all(r["n"] > 0 and r["run_id"] for r in rows)


def test_top_campaigns_by_hard_conversions(con):
    rows = _rows(con, _blocks()["top_campaigns_by_hard_conversions"])
    assert 1 <= len(rows) <= 10
    hard = [r["hard_conversions"] for r in rows]
    assert hard == sorted(hard, reverse=True) and hard[0] > 0
    assert all(r["assisted_hard_conversions"] <= r["hard_conversions"] for r in rows)


def test_assist_rate_by_source(con):
    rows = _rows(con, _blocks()["assist_rate_by_source"])
    assert len(rows) >= 2
    assert all(r["assist_rate"] is None or 0 <= r["assist_rate"] <= 1 for r in rows)
    assert any(r["assisted_hard_conversions"] > 0 for r in rows)


def test_device_split(con):
    rows = _rows(con, _blocks()["device_split"])
    assert len(rows) >= 2
    assert abs(sum(r["pct_of_events"] for r in rows) - 100) < 0.5
    assert all(0 <= r["converting_user_days_share"] <= 1 for r in rows if r["converting_user_days_share"] is not None)


def test_week_over_week_trend(con):
    rows = _rows(con, _blocks()["week_over_week_trend"])
    assert [str(r["week_start"]) for r in rows] == ["2024-05-06", "2024-05-13"]
    assert all(r["days"] == 7 for r in rows)
    assert rows[0]["hard_conversions_wow_pct"] is None and rows[1]["hard_conversions_wow_pct"] is not None


def test_intent_not_yet_converted(con):
    rows = _rows(con, _blocks()["intent_not_yet_converted"])
    for r in rows:  # may be empty on small data; what it returns must fit its definition
        assert r["utm_source"] != "(direct)"
        assert r["hard_conversions"] < 0.5 * r["overall_hard_per_soft"] * r["soft_conversions"] + 1e-9


def test_aggregation_rules_stated_in_the_doc(con):
    # within one dimension of dimension_summary, additive metrics add up to the total row
    bad = _rows(con, """
        WITH t AS (SELECT event_date, events, hard_conversions, soft_conversions, hard_value,
                          assisted_hard_conversions, users
                   FROM dimension_summary WHERE dimension = 'total')
        SELECT d.event_date, d.dimension
        FROM dimension_summary d JOIN t USING (event_date)
        WHERE d.dimension <> 'total'
        GROUP BY d.event_date, d.dimension, t.events, t.hard_conversions, t.soft_conversions,
                 t.hard_value, t.assisted_hard_conversions
        HAVING sum(d.events) <> t.events OR sum(d.hard_conversions) <> t.hard_conversions
            OR sum(d.soft_conversions) <> t.soft_conversions
            OR sum(d.assisted_hard_conversions) <> t.assisted_hard_conversions
            OR abs(sum(d.hard_value) - t.hard_value) > 1e-6""")
    assert bad == []
    # campaign_daily adds up to the same totals; its users do not (a user spans rows)
    per_day = _rows(con, """
        SELECT c.event_date, sum(c.events) AS events, sum(c.hard_conversions) AS hard,
               sum(c.users) AS summed_users, any_value(t.events) AS t_events,
               any_value(t.hard_conversions) AS t_hard, any_value(t.users) AS t_users
        FROM campaign_daily c JOIN dimension_summary t
          ON t.event_date = c.event_date AND t.dimension = 'total'
        GROUP BY c.event_date""")
    assert len(per_day) == 14
    for r in per_day:
        assert (r["events"], r["hard"]) == (r["t_events"], r["t_hard"]), r
        assert r["summed_users"] >= r["t_users"], r
    assert any(r["summed_users"] > r["t_users"] for r in per_day)
    # conversions_by_name: hard conversions and values match campaign_daily per date
    mismatch = _rows(con, """
        WITH n AS (SELECT event_date, sum(conversions) FILTER (WHERE kind = 'hard') AS hard,
                          sum(value) FILTER (WHERE kind = 'hard') AS hard_value,
                          sum(conversions) FILTER (WHERE kind = 'soft') AS soft
                   FROM conversions_by_name GROUP BY 1),
             c AS (SELECT event_date, sum(hard_conversions) AS hard, sum(hard_value) AS hard_value,
                          sum(soft_conversions) AS soft
                   FROM campaign_daily GROUP BY 1)
        SELECT * FROM n JOIN c USING (event_date)
        WHERE coalesce(n.hard, 0) <> c.hard OR coalesce(n.soft, 0) <> c.soft
           OR abs(coalesce(n.hard_value, 0) - c.hard_value) > 1e-6""")
    assert mismatch == []
