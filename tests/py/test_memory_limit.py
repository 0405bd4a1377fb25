"""`--memory-limit` bounds the job without changing its result: the tables
equal an unlimited run's, and the intermediate stages it keeps on local disk
(under TMPDIR) are gone afterwards, also when the run fails."""

from __future__ import annotations

from pathlib import Path

from conftest import FIXTURES
from tablediff import TABLES, diff_tables, read_partition, run_convmart

D = "2024-03-10"


def assert_same_tables(a: Path, b: Path, date: str) -> None:
    for table in TABLES:
        ta = read_partition(a, table, date, allow_missing=True)
        tb = read_partition(b, table, date, allow_missing=True)
        assert (ta is None) == (tb is None), table
        if ta is not None:
            d = diff_tables(ta, tb, names=("unlimited", "limited"))
            assert d is None, f"{table}:\n{d}"


def test_limited_run_equals_unlimited_on_generated_data(tmp_path):
    run_convmart("generate", "--output", tmp_path / "in", "--start-date", "2024-05-01",
                 "--days", "6", "--events-per-day", "30000", "--seed", "11")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    common = ("run", "--input", tmp_path / "in", "--date", "2024-05-06", "--lookback-days", "5")
    run_convmart(*common, "--output", tmp_path / "unlimited")
    run_convmart(*common, "--output", tmp_path / "limited", "--memory-limit", "256MiB",
                 env={"TMPDIR": str(tmp)})
    assert_same_tables(tmp_path / "unlimited", tmp_path / "limited", "2024-05-06")
    assert list(tmp.iterdir()) == [], "stage files under TMPDIR must be removed"


def test_limited_run_equals_unlimited_on_the_dedup_fixture(tmp_path):
    common = ("run", "--input", FIXTURES / "dedup", "--date", D, "--lookback-days", "2")
    run_convmart(*common, "--output", tmp_path / "unlimited")
    run_convmart(*common, "--output", tmp_path / "limited", "--memory-limit", "32MiB")
    assert_same_tables(tmp_path / "unlimited", tmp_path / "limited", D)


def test_stage_files_are_removed_when_the_run_fails(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # An output that cannot be created fails after the stages were computed.
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a directory")
    r = run_convmart("run", "--input", FIXTURES / "dedup", "--date", D, "--lookback-days", "2",
                     "--output", blocker, "--memory-limit", "32MiB", env={"TMPDIR": str(tmp)},
                     check=False)
    assert r.returncode != 0
    assert list(tmp.iterdir()) == [], "stage files under TMPDIR must be removed"
