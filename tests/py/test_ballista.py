"""`run --engine ballista` on a real cluster (one scheduler, two executors,
separate processes on loopback) gives the same tables, manifest counts and
re-run behaviour as the embedded engine: on every hand-made fixture (local
disk) and on generated multi-day data in SeaweedFS. Killing an executor in the
middle of a run either still completes correctly or fails cleanly with the
previous output intact."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from ballista_cluster import Cluster, cluster  # noqa: F401  (fixture)
from conftest import FIXTURES, convmart_bin
from s3server import s3  # noqa: F401  (fixture)
from tablediff import TABLES, diff_tables, read_partition, run_convmart

D = "2024-03-10"

# Each fixture scenario with the arguments its semantics tests use.
SCENARIOS = {
    "dedup": ("--lookback-days", "2"),
    "lookback": ("--lookback-days", "2"),
    "lookback-event": ("--lookback-days", "2", "--attribution", "event"),
    "dimensions": ("--lookback-days", "1"),
    "assisted": ("--lookback-days", "2"),
    "rejected": ("--lookback-days", "1"),
    "timestamps": ("--lookback-days", "1"),
    "rules_custom": ("--rules", str(FIXTURES / "rules_custom" / "rules.toml")),
}

# Manifest fields that must agree between engines (ids and times differ).
SAME_IN_MANIFEST = ("event_date", "rules_hash", "lookback_days", "attribution", "rows_read",
                    "bytes_read", "duplicates_dropped", "rejected_rows")


def manifest_of(out: Path, date: str = D) -> dict:
    return json.loads((Path(out) / "_runs" / f"event_date={date}.json").read_text())


def assert_same_output(embedded: Path, ballista: Path, date: str = D) -> None:
    failures = []
    for table in TABLES:
        a = read_partition(embedded, table, date, allow_missing=True)
        b = read_partition(ballista, table, date, allow_missing=True)
        if a is None or b is None:
            if (a is None) != (b is None):
                failures.append(f"{table}: a file on one side only")
            continue
        d = diff_tables(a, b, names=("embedded", "ballista"))
        if d:
            failures.append(f"== {table} ==\n{d}")
    ma, mb = manifest_of(embedded, date), manifest_of(ballista, date)
    for k in SAME_IN_MANIFEST:
        if ma[k] != mb[k]:
            failures.append(f"manifest {k}: {ma[k]!r} (embedded) vs {mb[k]!r} (ballista)")
    for t, entry in ma["tables"].items():
        if entry["rows"] != mb["tables"][t]["rows"]:
            failures.append(f"manifest tables.{t}.rows: {entry['rows']} vs {mb['tables'][t]['rows']}")
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def committed_files(out: Path) -> list[str]:
    """Every file a reader could see: tables and manifests (no staging)."""
    return sorted(p.relative_to(out).as_posix() for p in Path(out).rglob("*")
                  if p.is_file() and not p.relative_to(out).as_posix().startswith("_staging"))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fixture_tables_equal_the_embedded_engine(cluster, scenario, tmp_path):
    folder = FIXTURES / scenario.split("-")[0]
    args = ("run", "--input", folder, "--date", D, *SCENARIOS[scenario])
    run_convmart(*args, "--output", tmp_path / "embedded")
    run_convmart(*args, "--output", tmp_path / "ballista", "--engine", "ballista",
                 "--scheduler", cluster.url)
    assert_same_output(tmp_path / "embedded", tmp_path / "ballista")
    # Stage files written by the executors are gone after the commit.
    assert not list((tmp_path / "ballista").glob("_staging/**/*.parquet"))


@pytest.fixture(scope="module")
def generated_on_s3(s3, tmp_path_factory):
    """Five days of generated events in s3://<bucket>/ballista/events."""
    local = tmp_path_factory.mktemp("ballista-gen")
    run_convmart("generate", "--output", local / "events", "--start-date", "2024-05-01",
                 "--days", "5", "--events-per-day", "20000", "--seed", "7")
    s3.delete_prefix("ballista")
    assert s3.upload_dir(local / "events", "ballista/events")
    return s3.url("ballista/events")


def test_generated_multi_day_s3_data_equals_the_embedded_engine(s3, cluster, generated_on_s3,
                                                                 tmp_path):
    date = "2024-05-05"
    common = ("run", "--input", generated_on_s3, "--date", date, "--lookback-days", "4")
    run_convmart(*common, "--output", s3.url("ballista/out-embedded"), env=s3.env())
    run_convmart(*common, "--output", s3.url("ballista/out-cluster"), "--engine", "ballista",
                 "--scheduler", cluster.url, env=s3.env())
    s3.download_dir("ballista/out-embedded", tmp_path / "embedded")
    s3.download_dir("ballista/out-cluster", tmp_path / "cluster")
    for table in TABLES[:3]:
        assert read_partition(tmp_path / "cluster", table, date).num_rows > 0, table
    assert_same_output(tmp_path / "embedded", tmp_path / "cluster", date)
    assert not [k for k in s3.list("ballista/out-cluster") if k.startswith("_staging/")]


def test_rerun_on_ballista_replaces_the_previous_run(s3, cluster, generated_on_s3, tmp_path):
    date = "2024-05-04"
    common = ("run", "--input", generated_on_s3, "--date", date, "--lookback-days", "3",
              "--output", s3.url("ballista/rerun"), "--engine", "ballista",
              "--scheduler", cluster.url)
    run_convmart(*common, env=s3.env())
    first = json.loads(s3.read_bytes(f"ballista/rerun/_runs/event_date={date}.json"))
    run_convmart(*common, env=s3.env())
    second = json.loads(s3.read_bytes(f"ballista/rerun/_runs/event_date={date}.json"))
    assert first["run_id"] != second["run_id"]
    listed = sorted(f["path"] for t in second["tables"].values() for f in t["files"])
    present = sorted(k for k in s3.list("ballista/rerun") if not k.startswith("_runs/"))
    assert present == listed, "a re-run must leave exactly the files its manifest lists"


def test_engine_ballista_needs_a_scheduler(tmp_path):
    r = run_convmart("run", "--input", FIXTURES / "dedup", "--output", tmp_path / "o",
                     "--date", D, "--engine", "ballista", check=False)
    assert r.returncode == 2
    assert "--scheduler" in r.stderr


def test_unreachable_scheduler_exits_75_and_names_it(tmp_path):
    from ballista_cluster import free_ports
    (port,) = free_ports(1)
    r = run_convmart("run", "--input", FIXTURES / "dedup", "--output", tmp_path / "o",
                     "--date", D, "--engine", "ballista", "--scheduler",
                     f"df://127.0.0.1:{port}", check=False)
    assert r.returncode == 75, r.stderr
    assert f"df://127.0.0.1:{port}" in r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) > 0
    assert not (tmp_path / "o" / "_runs").exists()


def test_killing_an_executor_mid_run_completes_or_fails_cleanly(s3, generated_on_s3, tmp_path):
    """Its own cluster, since one executor does not survive the test."""
    c = Cluster(workdir=tmp_path / "cluster", env=s3.env()).start()
    try:
        date = "2024-05-05"
        out = s3.url("ballista/kill")
        common = ("run", "--input", generated_on_s3, "--date", date, "--lookback-days", "4",
                  "--output", out)
        # Previous output, committed by the embedded engine.
        run_convmart(*common, env=s3.env())
        before_manifest = s3.read_bytes(f"ballista/kill/_runs/event_date={date}.json")
        before = {k: s3.read_bytes(f"ballista/kill/{k}") for k in s3.list("ballista/kill")
                  if not k.startswith("_")}
        env = {**__import__("os").environ, **s3.env(), "RUST_BACKTRACE": "0"}
        proc = subprocess.Popen([str(convmart_bin()), *map(str, common), "--engine", "ballista",
                                 "--scheduler", c.url], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # Kill once the cluster is working on it: the first stage has started.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(k.startswith("_staging/") for k in s3.list("ballista/kill")) or \
                    "Submitted job" in c.log("scheduler") or "job" in c.log("executor1").lower():
                break
            time.sleep(0.1)
        killed_while_running = proc.poll() is None
        c.kill("executor1")
        stdout, stderr = proc.communicate(timeout=600)
        print(f"executor killed while the run was going: {killed_while_running}; "
              f"run exit {proc.returncode}; last line: {stderr.strip().splitlines()[-1]}")
        assert killed_while_running, "the run finished before the executor could be killed"
        if proc.returncode == 0:
            # Completed despite the loss: must equal the embedded result.
            emb = tmp_path / "embedded"
            run_convmart(*common[:-1], tmp_path / "embedded", env=s3.env())
            s3.download_dir("ballista/kill", tmp_path / "ballista")
            assert_same_output(emb, tmp_path / "ballista", date)
        else:
            last = stderr.strip().splitlines()[-1]
            assert proc.returncode in (70, 75), stderr[-3000:]
            assert re.search(r"ballista|executor|job|stage", last, re.I), last
            assert s3.read_bytes(f"ballista/kill/_runs/event_date={date}.json") == before_manifest
            for k, data in before.items():
                assert s3.read_bytes(f"ballista/kill/{k}") == data, f"{k} changed"
    finally:
        c.stop()
