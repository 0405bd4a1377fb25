"""convmart_daily: run the convmart batch job once a day, for Apache Airflow 3.

One DAG run per UTC day D (``{{ ds }}``):

    run_convmart        convmart run --input IN --output OUT --date D --log-format json
         |
    wait_for_manifest   waits for OUT/_runs/event_date=D.json (the commit point of
                        the job) and checks that every file it lists exists;
                        emits the Asset ``convmart_daily_tables`` for downstream DAGs

Retries: convmart's exit code says whether a retry can help (SPEC section 6).

    exit 75 (storage unreachable, temporary fault)  -> ordinary exception: retried
    exit 2  (bad arguments or rules)                -> AirflowFailException: fails now
    exit 3  (no input partition for D)              -> AirflowFailException: fails now
    exit 65 (corrupt Parquet / missing column)      -> AirflowFailException: fails now
    anything else (crash, killed by a signal)       -> ordinary exception: retried

A BashOperator cannot make that distinction (``skip_on_exit_code`` *skips*, it
does not fail-without-retry), so the job runs in a small operator that starts
the binary with ``subprocess`` and maps its exit code to an exception (and
stops the binary when Airflow kills or times out the task). Retrying a failed
run is safe: convmart writes the manifest last, so a failed run leaves the
previous output of D intact, and a re-run replaces the partition.

Configuration, read at run time (an Airflow Variable wins over the environment
variable of the worker; nothing secret lives in this file):

    Variable                 env var                   meaning
    convmart_bin             CONVMART_BIN              path of the binary (default: `convmart` on PATH)
    convmart_input           CONVMART_INPUT            s3://bucket/prefix, file:///abs/path or /abs/path
    convmart_output          CONVMART_OUTPUT           idem
    convmart_aws_conn_id     CONVMART_AWS_CONN_ID      Airflow connection with the S3 settings (optional)
    convmart_rules           CONVMART_RULES            --rules FILE (optional)
    convmart_lookback_days   CONVMART_LOOKBACK_DAYS    --lookback-days N (optional)
    convmart_attribution     CONVMART_ATTRIBUTION      --attribution MODEL (optional)
    convmart_memory_limit    CONVMART_MEMORY_LIMIT     --memory-limit SIZE (optional, e.g. 4GiB)
    convmart_max_rejected_ratio  CONVMART_MAX_REJECTED_RATIO  --max-rejected-ratio R (optional)

S3 settings: without a connection id, convmart (and the manifest check) use the
worker's standard AWS_* environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL,
AWS_ALLOW_HTTP). With a connection id, the connection replaces them: login =
access key id, password = secret access key, extra ``region_name``,
``endpoint_url`` (or the connection's host) and ``aws_session_token``, the keys
an ``aws`` connection of the Amazon provider uses (that provider is not needed).

Parse-time settings (environment of the DAG processor): CONVMART_START_DATE
(first date to run, default 2024-01-01; catchup runs every day from there),
CONVMART_MAX_ACTIVE_RUNS (default 2), CONVMART_RETRIES (default 3),
CONVMART_RETRY_DELAY_SECONDS (default 300), CONVMART_EXECUTION_TIMEOUT_SECONDS
(default 14400: a run longer than 4 h is stopped and retried).

See README.md beside this file.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import posixpath
import shutil
import subprocess
from datetime import timedelta
from urllib.parse import urlsplit

import pendulum

from airflow.sdk import (
    DAG,
    Asset,
    BaseOperator,
    BaseSensorOperator,
    Connection,
    CronDataIntervalTimetable,
    PokeReturnValue,
    Variable,
)
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

DAG_ID = "convmart_daily"
TABLES = ("campaign_daily", "dimension_summary", "conversions_by_name", "rejected_events")

# Exit codes of convmart (SPEC section 6) that no retry can fix.
NOT_RETRYABLE = {
    2: "bad arguments or rules",
    3: "no input partition for the report date",
    65: "data error (corrupt Parquet, a required column missing, too many rejected rows)",
}
EXIT_TEMPORARY = 75

# Downstream DAGs can be scheduled on this Asset: schedule=[CONVMART_TABLES].
# Each event carries {"event_date", "output", "manifest", "run_id", "rows"} as extra.
CONVMART_TABLES = Asset(name="convmart_daily_tables", uri="x-convmart://daily_tables", group="convmart")

AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
)


class ConvmartTemporaryError(RuntimeError):
    """convmart failed in a way that a retry may fix (exit 75, crash, signal)."""


# --------------------------------------------------------------------------
# configuration (run time)
# --------------------------------------------------------------------------


def _setting(name: str, default: str | None = None) -> str | None:
    """Airflow Variable `name`, else environment variable NAME, else default."""
    value = Variable.get(name, default=None)
    if value in (None, ""):
        value = os.environ.get(name.upper())
    if value in (None, ""):
        value = default
    return value


def _required(name: str) -> str:
    value = _setting(name)
    if not value:
        raise AirflowFailException(
            f"convmart: set the Airflow Variable {name!r} or the environment variable {name.upper()}"
        )
    return value


def _s3_env() -> dict[str, str]:
    """Environment for convmart and the manifest check: the worker's own, or an Airflow connection's."""
    env = dict(os.environ)
    conn_id = _setting("convmart_aws_conn_id")
    if not conn_id:
        return env
    conn = Connection.get(conn_id)  # Airflow masks its password in logs
    extra = conn.extra_dejson or {}
    for var in AWS_VARS:  # never mix the worker's credentials with the connection's
        env.pop(var, None)
    endpoint = extra.get("endpoint_url") or (conn.host if conn.host and "://" in conn.host else None)
    settings = {
        "AWS_ACCESS_KEY_ID": conn.login,
        "AWS_SECRET_ACCESS_KEY": conn.password,
        "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
        "AWS_REGION": extra.get("region_name"),
        "AWS_ENDPOINT_URL": endpoint,
    }
    if endpoint and endpoint.lower().startswith("http://"):
        settings["AWS_ALLOW_HTTP"] = "true"
    env.update({k: v for k, v in settings.items() if v})
    return env


def _mask(env: dict[str, str]) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older task SDKs
        return
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if env.get(var):
            mask_secret(env[var])


# --------------------------------------------------------------------------
# storage access for the manifest check (pyarrow.fs: no boto, no provider)
# --------------------------------------------------------------------------


def _filesystem(url: str, env: dict[str, str]):
    """(pyarrow FileSystem, base path) for an output URL, with the same S3 settings as convmart."""
    from pyarrow import fs

    parts = urlsplit(url)
    if parts.scheme == "s3":
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT")
        kwargs = {
            "access_key": env.get("AWS_ACCESS_KEY_ID"),
            "secret_key": env.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": env.get("AWS_SESSION_TOKEN"),
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        }
        if endpoint:
            ep = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
            kwargs["scheme"] = ep.scheme
            kwargs["endpoint_override"] = ep.netloc  # path-style addressing for custom endpoints
        if not kwargs["access_key"]:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("access_key", "secret_key", "session_token")}
        return fs.S3FileSystem(**kwargs), posixpath.join(parts.netloc, parts.path.lstrip("/")).rstrip("/")
    if parts.scheme == "file":
        return fs.LocalFileSystem(), parts.path.rstrip("/")
    if parts.scheme in ("", None) or len(parts.scheme) == 1:  # plain path (or a Windows drive letter)
        return fs.LocalFileSystem(), os.path.abspath(url).rstrip("/")
    raise AirflowFailException(f"convmart: unsupported output URL scheme {parts.scheme!r}")


def _manifest_url(output: str, ds: str) -> str:
    return f"{output.rstrip('/')}/_runs/event_date={ds}.json"


def _check_manifest(output: str, ds: str, env: dict[str, str]) -> dict | None:
    """None while OUT/_runs/event_date=ds.json is absent; its summary once it and every file it lists exist."""
    from pyarrow import fs as pafs

    filesystem, base = _filesystem(output, env)
    manifest_path = f"{base}/_runs/event_date={ds}.json"
    if filesystem.get_file_info(manifest_path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(manifest_path) as f:
        manifest = json.loads(f.read().decode("utf-8"))

    if manifest.get("event_date") != ds:
        raise ValueError(f"manifest {manifest_path} is for {manifest.get('event_date')!r}, expected {ds}")
    tables = manifest.get("tables") or {}
    missing_tables = [t for t in TABLES if t not in tables]
    if missing_tables:
        raise ValueError(f"manifest {manifest_path} lacks tables {missing_tables}")
    problems = []
    rows = {}
    for name, entry in tables.items():
        rows[name] = entry.get("rows")
        for file in entry.get("files", []):
            info = filesystem.get_file_info(f"{base}/{file['path']}")
            if info.type != pafs.FileType.File:
                problems.append(f"{file['path']}: missing")
            elif file.get("bytes") is not None and info.size != file["bytes"]:
                problems.append(f"{file['path']}: {info.size} bytes, manifest says {file['bytes']}")
    if problems:
        raise ValueError(f"manifest {manifest_path} lists files that are not as recorded: {problems}")
    return {
        "event_date": ds,
        "output": output,
        "manifest": _manifest_url(output, ds),
        "run_id": manifest.get("run_id"),
        "rows": rows,
    }


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the task process dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux / no libc: on_kill and the finally block still apply
        pass


class ConvmartRunOperator(BaseOperator):
    """Runs `convmart run` for one date; exit 2/3/65 fail without retry, 75 and others are retried.

    A small operator rather than ``@task`` so that ``on_kill`` (called by Airflow on
    SIGTERM and on execution_timeout) can stop the convmart process.
    Returns (XCom) the URL of the run manifest.
    """

    template_fields = ("event_date",)

    def __init__(self, *, event_date: str = "{{ ds }}", **kwargs) -> None:
        super().__init__(**kwargs)
        self.event_date = event_date
        self._proc: subprocess.Popen | None = None

    def execute(self, context) -> str:
        ds = self.event_date
        binary = _setting("convmart_bin", "convmart")
        resolved = shutil.which(binary)
        if resolved is None:
            raise AirflowFailException(
                f"convmart: binary {binary!r} not found or not executable on this worker "
                "(set the Variable convmart_bin or the environment variable CONVMART_BIN)"
            )
        output = _required("convmart_output")
        cmd = [
            resolved, "run",
            "--input", _required("convmart_input"),
            "--output", output,
            "--date", ds,
            "--log-format", "json",
        ]  # fmt: skip
        for name, flag in (
            ("convmart_rules", "--rules"),
            ("convmart_lookback_days", "--lookback-days"),
            ("convmart_attribution", "--attribution"),
            ("convmart_memory_limit", "--memory-limit"),
            ("convmart_max_rejected_ratio", "--max-rejected-ratio"),
        ):
            value = _setting(name)
            if value:
                cmd += [flag, str(value)]
        env = _s3_env()
        _mask(env)

        log.info("running: %s", " ".join(cmd))  # the command line holds no secret
        tail: collections.deque[str] = collections.deque(maxlen=20)
        self._proc = proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=_die_with_parent,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # JSON log lines (progress, errors) go to the task log as they come
                line = line.rstrip("\n")
                if line:
                    log.info("convmart: %s", line)
                    tail.append(line)
            rc = proc.wait()
        finally:  # an exception (timeout) while convmart runs: do not leave it running
            self._stop()

        last = tail[-1] if tail else "(no output)"
        if rc == 0:
            manifest = _manifest_url(output, ds)
            log.info("convmart finished for %s; manifest %s", ds, manifest)
            return manifest
        if rc in NOT_RETRYABLE:
            raise AirflowFailException(f"convmart exit {rc} ({NOT_RETRYABLE[rc]}), not retried: {last}")
        if rc == EXIT_TEMPORARY:
            raise ConvmartTemporaryError(f"convmart exit 75 (temporary fault), will be retried: {last}")
        raise ConvmartTemporaryError(f"convmart exit {rc} (unexpected), will be retried: {last}")

    def on_kill(self) -> None:
        self._stop()

    def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        log.warning("stopping convmart (pid %s)", proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ConvmartManifestSensor(BaseSensorOperator):
    """Waits until the run manifest of `event_date` exists and every file it lists is there.

    The manifest is convmart's commit point: its presence means the date is complete.
    Reads storage with pyarrow.fs and the same S3 settings as the job (environment or
    the connection named by convmart_aws_conn_id). On success, pushes the summary as
    XCom and, as the extra of the outlet Asset event, tells downstream DAGs the date.

    (A plain BaseSensorOperator rather than ``@task.sensor``: in apache-airflow 3.3.2
    with apache-airflow-providers-standard 1.21.0, importing the decorator's
    PythonSensor emits a DeprecatedImportWarning at DAG parse time.)
    """

    template_fields = ("event_date",)

    def __init__(self, *, event_date: str = "{{ ds }}", **kwargs) -> None:
        super().__init__(**kwargs)
        self.event_date = event_date

    def poke(self, context) -> PokeReturnValue:
        output = _required("convmart_output")
        env = _s3_env()
        _mask(env)
        summary = _check_manifest(output, self.event_date, env)
        if summary is None:
            log.info("manifest %s not there yet", _manifest_url(output, self.event_date))
            return PokeReturnValue(is_done=False)
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = summary
        log.info("convmart tables committed for %s: %s", self.event_date, summary["rows"])
        return PokeReturnValue(is_done=True, xcom_value=summary)


# --------------------------------------------------------------------------
# DAG
# --------------------------------------------------------------------------

with DAG(
    dag_id=DAG_ID,
    description="convmart: hard/soft conversion tables, one UTC day per run",
    # Interval timetable: the run for day D starts once D is over (at D+1 00:00 UTC)
    # and has ds = D, the day whose partition it reports.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.parse(os.environ.get("CONVMART_START_DATE", "2024-01-01"), tz="UTC"),
    catchup=True,  # backfill every day since start_date; each day is independent
    # Days do not depend on each other (each run reads its own lookback window),
    # so a backfill can run a few in parallel; each run uses up to --memory-limit.
    max_active_runs=int(os.environ.get("CONVMART_MAX_ACTIVE_RUNS", "2")),
    default_args={
        "owner": "data-engineering",
        "retries": int(os.environ.get("CONVMART_RETRIES", "3")),
        "retry_delay": timedelta(seconds=int(os.environ.get("CONVMART_RETRY_DELAY_SECONDS", "300"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=1),
    },
    tags=["convmart"],
    doc_md=__doc__,
) as dag:

    ConvmartRunOperator(
        task_id="run_convmart",
        event_date="{{ ds }}",
        execution_timeout=timedelta(seconds=int(os.environ.get("CONVMART_EXECUTION_TIMEOUT_SECONDS", "14400"))),
    ) >> ConvmartManifestSensor(
        task_id="wait_for_manifest",
        event_date="{{ ds }}",
        poke_interval=60,
        timeout=timedelta(hours=2).total_seconds(),
        mode="reschedule",
        outlets=[CONVMART_TABLES],
    )
