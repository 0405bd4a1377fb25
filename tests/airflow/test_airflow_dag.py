"""The Airflow DAG examples/airflow/convmart_daily.py, run for real.

Airflow lives in a virtualenv of its own (.venv-airflow, made by
tests/airflow/setup.sh) so that its pins never clash with the test venv; this
module runs in the test venv (pytest, pyarrow, the SeaweedFS fixture) and
drives Airflow through its CLI, as an operator would:

    bash tests/airflow/setup.sh && .venv/bin/python -m pytest tests/airflow -q
    (or .venv-airflow/bin/python -m pytest tests/airflow -q: setup.sh puts pytest there too)

What it checks:
- the DAG file compiles (`python -m py_compile`) and imports into a DagBag
  with no import error and no warning; `airflow dags list-import-errors` is empty;
- `airflow dags test convmart_daily D` for two consecutive dates against a real
  S3 server (SeaweedFS on loopback), the first with S3 settings from AWS_*
  environment variables, the second from an Airflow connection (and the job's
  settings from Airflow Variables); then both manifests, the tables they list,
  the asset events and that no secret reached the logs;
- the exit-code policy: 2/3/65 fail at once (one call, no retry), 75 is retried.

Environment: AIRFLOW_VENV (default .venv-airflow), CONVMART_BIN (default
target/debug/convmart).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "py"))
# SeaweedFS' `weed` lives in the test venv; find it also when pytest runs from .venv-airflow.
if not os.environ.get("WEED_BIN") and (ROOT / ".venv" / "bin" / "weed").exists():
    os.environ["WEED_BIN"] = str(ROOT / ".venv" / "bin" / "weed")
from s3server import s3  # noqa: E402,F401  (registers the session fixture `s3`)

AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", ROOT / ".venv-airflow"))
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"
AIRFLOW_PY = AIRFLOW_VENV / "bin" / "python"
DAG_DIR = ROOT / "examples" / "airflow"
DAG_FILE = DAG_DIR / "convmart_daily.py"
DAG_ID = "convmart_daily"
CONVMART_BIN = Path(os.environ.get("CONVMART_BIN", ROOT / "target" / "debug" / "convmart"))

TABLES = ("campaign_daily", "dimension_summary", "conversions_by_name", "rejected_events")
GEN_START, GEN_DAYS, GEN_EVENTS = "2024-03-01", 7, 2000
DATES = ("2024-03-06", "2024-03-07")  # two consecutive days with a lookback behind them
PREFIX = "airflow-test"
CONN_ID = "convmart_s3"
RUN_TIMEOUT = 600


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Airflow:
    """The airflow CLI of .venv-airflow with a private AIRFLOW_HOME."""

    def __init__(self, home: Path):
        self.home = home
        self.logs = home / "cli-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "AWS_", "CONVMART_", "PYTHON"))
        }
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(DAG_DIR),
            # parse-time settings of the DAG: start before the test dates,
            # and a short retry delay so that retries happen within the test
            CONVMART_START_DATE=GEN_START,
            CONVMART_RETRY_DELAY_SECONDS="1",
        )
        self.env = env
        self.n = 0

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT):
        """Run `airflow ARGS`; returns (returncode, output, log path)."""
        self.n += 1
        log = self.logs / f"{self.n:02d}-{'-'.join(a.replace('/', '_') for a in args[:3])}.log"
        full_env = dict(self.env)
        full_env.update(env or {})
        with open(log, "w") as out:
            proc = subprocess.run(
                [str(AIRFLOW), *args],
                env=full_env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        return proc.returncode, log.read_text(errors="replace"), log

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "airflow.db")


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Airflow:
    if not AIRFLOW.exists():
        pytest.fail(
            f"{AIRFLOW} not found: run `bash tests/airflow/setup.sh` first (it creates {AIRFLOW_VENV})",
            pytrace=False,
        )
    af = Airflow(tmp_path_factory.mktemp("airflow_home"))
    rc, out, log = af.run("db", "migrate")
    assert rc == 0, f"airflow db migrate failed ({log}):\n{_tail(log)}"
    return af


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """Raw events made by `convmart generate` in a local directory."""
    if not (CONVMART_BIN.exists() and os.access(CONVMART_BIN, os.X_OK)):
        pytest.fail(f"convmart binary {CONVMART_BIN} not found (build it, or set CONVMART_BIN)", pytrace=False)
    out = tmp_path_factory.mktemp("generated") / "input"
    proc = subprocess.run(
        [
            str(CONVMART_BIN), "generate", "--output", str(out),
            "--start-date", GEN_START, "--days", str(GEN_DAYS),
            "--events-per-day", str(GEN_EVENTS), "--seed", "20240301",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"convmart generate failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    for d in DATES:
        assert list((out / f"event_date={d}").glob("*.parquet")), f"generate wrote no partition {d}"
    return out


@pytest.fixture(scope="module")
def s3_input(s3, generated) -> str:
    s3.upload_dir(generated, f"{PREFIX}/input")
    return s3.url(f"{PREFIX}/input")


# --------------------------------------------------------------------------
# the DAG file itself
# --------------------------------------------------------------------------

DAGBAG_PROBE = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from airflow.dag_processing.dagbag import DagBag
        before = len(caught)
        bag = DagBag(dag_folder=sys.argv[1])
        during = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught[before:]]
    dag = bag.dags.get("convmart_daily")
    info = {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "captured_warnings": {str(k): list(v) for k, v in bag.captured_warnings.items()},
        "warnings_during_parse": during,
        "dag_ids": sorted(bag.dags),
    }
    if dag is not None:
        run, wait = dag.get_task("run_convmart"), dag.get_task("wait_for_manifest")
        info.update(
            catchup=dag.catchup,
            max_active_runs=dag.max_active_runs,
            timetable=type(dag.timetable).__name__,
            cron=getattr(dag.timetable, "expression", None) or getattr(dag.timetable, "_expression", None),
            tasks=sorted(dag.task_ids),
            downstream_of_run=sorted(run.downstream_task_ids),
            run_retries=run.retries,
            sensor_mode=wait.mode,
            sensor_outlets=[getattr(o, "name", str(o)) for o in wait.outlets],
        )
    print("PROBE" + json.dumps(info))
    """
)


def test_dag_file_compiles_and_imports_without_errors_or_warnings(airflow, tmp_path):
    proc = subprocess.run(
        [str(AIRFLOW_PY), "-m", "py_compile", str(DAG_FILE)],
        capture_output=True, text=True, env=airflow.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    probe = tmp_path / "probe.py"
    probe.write_text(DAGBAG_PROBE)
    proc = subprocess.run(
        [str(AIRFLOW_PY), str(probe), str(DAG_DIR)],
        capture_output=True, text=True, env=airflow.env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PROBE"))
    info = json.loads(line[len("PROBE"):])
    assert info["import_errors"] == {}
    assert info["captured_warnings"] == {}
    assert info["warnings_during_parse"] == []
    assert info["dag_ids"] == [DAG_ID]
    assert info["catchup"] is True
    assert 1 <= info["max_active_runs"] <= 4
    assert info["timetable"] == "CronDataIntervalTimetable" and info["cron"] == "0 0 * * *"
    assert info["tasks"] == ["run_convmart", "wait_for_manifest"]
    assert info["downstream_of_run"] == ["wait_for_manifest"]
    assert info["run_retries"] >= 1
    assert info["sensor_mode"] == "reschedule"
    assert info["sensor_outlets"] == ["convmart_daily_tables"]

    rc, out, log = airflow.run("dags", "list-import-errors", "-o", "json")
    assert rc == 0, _tail(log)
    json_lines = [line for line in out.splitlines() if line.startswith("[")]
    assert json_lines and json.loads(json_lines[-1]) == [], f"import errors reported:\n{_tail(log)}"


# --------------------------------------------------------------------------
# two consecutive dates on S3, S3 settings from env, then from a connection
# --------------------------------------------------------------------------


def _read_manifest(s3, date: str) -> dict:
    return json.loads(s3.read_bytes(f"{PREFIX}/output/_runs/event_date={date}.json"))


def test_dags_test_two_consecutive_dates_on_s3(airflow, s3, s3_input):
    output = s3.url(f"{PREFIX}/output")
    job_env = {"CONVMART_BIN": str(CONVMART_BIN), "CONVMART_INPUT": s3_input, "CONVMART_OUTPUT": output}

    # date 1: settings from the worker environment, S3 credentials from AWS_*
    env1 = {**job_env, **s3.env()}
    # date 2: no AWS_* at all; an Airflow connection (aws-style extras) and Airflow Variables
    conn = {
        "conn_type": "aws",
        "login": s3.access_key,
        "password": s3.secret_key,
        "extra": {"endpoint_url": s3.endpoint, "region_name": s3.region},
    }
    env2 = {
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn),
        "AIRFLOW_VAR_CONVMART_AWS_CONN_ID": CONN_ID,
        "AIRFLOW_VAR_CONVMART_BIN": str(CONVMART_BIN),
        "AIRFLOW_VAR_CONVMART_INPUT": s3_input,
        "AIRFLOW_VAR_CONVMART_OUTPUT": output,
    }

    outputs = {}
    for date, env in zip(DATES, (env1, env2)):
        t0 = time.monotonic()
        rc, out, log = airflow.run("dags", "test", DAG_ID, date, env=env)
        print(f"airflow dags test {DAG_ID} {date}: rc={rc} in {time.monotonic() - t0:.1f}s")
        assert rc == 0, f"airflow dags test {date} failed (log {log}):\n{_tail(log, 120)}"
        outputs[date] = out

    for date in DATES:
        out = outputs[date]
        assert f"--date {date} --log-format json" in out, "the task did not run convmart as documented"
        assert s3.secret_key not in out, f"the S3 secret appears in the Airflow log of {date}"

        manifest = _read_manifest(s3, date)
        assert manifest["event_date"] == date
        assert set(TABLES) <= set(manifest["tables"]), manifest["tables"].keys()
        for table in TABLES:
            entry = manifest["tables"][table]
            listed = sorted(f["path"] for f in entry["files"])
            present = sorted(f"{table}/{p}" for p in s3.list(f"{PREFIX}/output/{table}")
                             if p.startswith(f"event_date={date}/"))  # fmt: skip
            assert listed == present, f"{table} {date}: manifest lists {listed}, storage has {present}"
            assert listed, f"{table} {date}: no file"
            rows = 0
            fs = s3.filesystem()
            for path in listed:
                rows += pq.ParquetFile(fs.open_input_file(f"{s3.bucket}/{PREFIX}/output/{path}")).metadata.num_rows
            assert rows == entry["rows"], f"{table} {date}: files hold {rows} rows, manifest says {entry['rows']}"
        assert manifest["tables"]["campaign_daily"]["rows"] > 0
        assert manifest["tables"]["dimension_summary"]["rows"] > 0

        # the total row of dimension_summary: the day had events
        path = manifest["tables"]["dimension_summary"]["files"][0]["path"]
        t = pq.read_table(s3.filesystem().open_input_file(f"{s3.bucket}/{PREFIX}/output/{path}"))
        total = [r for r in t.to_pylist() if r["dimension"] == "total"]
        assert len(total) == 1 and total[0]["dimension_value"] == "(all)" and total[0]["events"] > 0

    # both runs and both tasks succeeded; the sensor emitted one asset event per date
    with airflow.db() as db:
        states = db.execute(
            "SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run dr "
            "ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
            "WHERE ti.dag_id = ? AND date(dr.logical_date) IN (?, ?)", (DAG_ID, *DATES),
        ).fetchall()  # fmt: skip
        extras = [json.loads(e) for (e,) in db.execute(
            "SELECT extra FROM asset_event WHERE source_dag_id = ? ORDER BY id", (DAG_ID,))]  # fmt: skip
    assert sorted(states) == sorted([("run_convmart", "success"), ("wait_for_manifest", "success")] * 2), states
    by_date = {e["event_date"]: e for e in extras}
    for date in DATES:
        assert by_date[date]["manifest"] == f"{output}/_runs/event_date={date}.json"
        assert by_date[date]["run_id"] == _read_manifest(s3, date)["run_id"]


# --------------------------------------------------------------------------
# exit codes: which failures are retried
# --------------------------------------------------------------------------

FAKE = """#!/usr/bin/env bash
# stand-in for convmart: records the call, then answers with the next exit code;
# `real` runs the real binary with the same arguments
echo "$*" >> {calls}
n=$(wc -l < {calls})
codes=({codes})
code=${{codes[$((n - 1))]:-${{codes[-1]}}}}
if [ "$code" = real ]; then exec {real} "$@"; fi
if [ "$code" = hang ]; then echo $$ > {calls}.pid; exec sleep 300; fi
echo '{{"level":"ERROR","message":"stand-in failure","exit_code":'"$code"'}}' >&2
exit "$code"
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_execution_timeout_stops_the_convmart_process(airflow, generated, tmp_path):
    calls_file = tmp_path / "calls"
    fake = tmp_path / "convmart-fake"
    fake.write_text(FAKE.format(calls=calls_file, codes="hang", real=CONVMART_BIN))
    fake.chmod(0o755)
    env = {
        "CONVMART_BIN": str(fake),
        "CONVMART_INPUT": str(generated),
        "CONVMART_OUTPUT": str(tmp_path / "output"),
        "CONVMART_RETRIES": "0",
        "CONVMART_EXECUTION_TIMEOUT_SECONDS": "5",
    }
    t0 = time.monotonic()
    rc, out, log = airflow.run("dags", "test", DAG_ID, "2024-04-06", env=env, timeout=240)
    assert rc != 0, f"a timed-out run must fail (log {log})"
    assert time.monotonic() - t0 < 200, "the task did not time out"
    assert "stopping convmart (pid" in out, f"the operator did not stop convmart itself (log {log})"
    pid = int((tmp_path / "calls.pid").read_text())
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(pid), f"convmart (pid {pid}) still runs after the task timed out (log {log})"


@pytest.mark.parametrize(
    "codes, date, succeeds, calls",
    [
        pytest.param("2", "2024-04-02", False, 1, id="exit2-fails-without-retry"),
        pytest.param("3", "2024-04-03", False, 1, id="exit3-fails-without-retry"),
        pytest.param("65", "2024-04-04", False, 1, id="exit65-fails-without-retry"),
        pytest.param("75", "2024-04-05", False, 3, id="exit75-retried-until-retries-run-out"),
        pytest.param("75 real", "2024-03-05", True, 2, id="exit75-then-success"),
    ],
)
def test_exit_codes_decide_retries(airflow, generated, tmp_path, codes, date, succeeds, calls):
    calls_file = tmp_path / "calls"
    fake = tmp_path / "convmart-fake"
    fake.write_text(FAKE.format(calls=calls_file, codes=codes, real=CONVMART_BIN))
    fake.chmod(0o755)
    env = {
        "CONVMART_BIN": str(fake),
        "CONVMART_INPUT": str(generated),
        "CONVMART_OUTPUT": str(tmp_path / "output"),
        "CONVMART_RETRIES": "2",  # parse-time: 3 tries at most
    }
    rc, out, log = airflow.run("dags", "test", DAG_ID, date, env=env)
    made = calls_file.read_text().splitlines() if calls_file.exists() else []
    assert len(made) == calls, f"convmart called {len(made)} times, expected {calls} (log {log}):\n{_tail(log, 80)}"
    assert all(f"--date {date} --log-format json" in c for c in made), made
    if succeeds:
        assert rc == 0, f"expected success (log {log}):\n{_tail(log, 80)}"
        assert (tmp_path / "output" / "_runs" / f"event_date={date}.json").is_file()
    else:
        assert rc != 0, f"dags test should report the failed run (log {log})"
        if codes in ("2", "3", "65"):
            assert f"convmart exit {codes} (" in out and "not retried" in out
        else:
            assert "will be retried" in out
