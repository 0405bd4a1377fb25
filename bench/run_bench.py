#!/usr/bin/env python3
"""convmart vs DuckDB (and Polars) on the same generated files, checked equal.

    bench/run.sh [--preset XS|S|scaling ...] [--repeat N] [--max-per-day N]
                 [--engines convmart,convmart-1GiB,convmart-s3,duckdb,polars,floor]

For every workload (30 days x N events/day, `convmart generate`, seeded) it
runs, on the last generated date with lookback 30:

  convmart        `convmart run` on local disk
  convmart-1GiB   the same with `--memory-limit 1GiB`
  convmart-s3     the same with input and output on SeaweedFS (loopback)
  convmart-ballista  the same on a Ballista cluster on this machine: `convmart
                  scheduler` + 2 `convmart executor`s (each --concurrent-tasks = nproc/2),
                  started for each of its runs; peak RSS is the client's only
  duckdb          bench/reference_duckdb.py (independent SPEC implementation), DuckDB threads = nproc
  polars          bench/reference_polars.py, if present (POLARS_MAX_THREADS = nproc)
  floor           `convmart scan-floor`: only read and decode the columns the job needs

Repeats are interleaved (engine order inside each repeat), wall time is the
median, peak RSS the maximum over repeats (os.wait4 ru_maxrss of the
process itself; for S3 the SeaweedFS server is not included). Every engine's
tables of the last repeat are compared with DuckDB's (tests/py/tablediff.py,
doubles within 1e-9 relative); a difference or a failed run is printed,
written to the table and makes the exit code 1.

Data lives in bench/work/<preset>-<events per day>/input and is reused when
its marker (days, events per day, seed, start date) matches; the results of
each preset replace that preset's section of bench/results.md.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "py"))

from tablediff import TABLES, diff_tables, read_partition  # noqa: E402

BENCH = REPO / "bench"
WORK = BENCH / "work"
RESULTS = BENCH / "results.md"
DEFAULT_BIN = REPO / "target" / "bench" / "release" / "convmart"
PY = sys.executable

START = dt.date(2026, 1, 1)
DAYS = 30
LOOKBACK = 30
SEED = 42
MEMORY_LIMIT = "1GiB"
RSS_TARGET_MIB = 1.5 * 1024
S3_BUCKET = "convmart-test"

PRESETS = {
    "tiny": [2_000],  # smoke test of the harness itself
    "XS": [20_000],
    "S": [1_000_000],
    "scaling": [250_000, 500_000, 1_000_000, 2_000_000],
}
ALL_ENGINES = ("convmart", "convmart-1GiB", "convmart-s3", "convmart-ballista", "duckdb",
               "polars", "floor")
REFERENCE = "duckdb"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rel(p) -> str:
    """p relative to the repository when it lies inside it (symlinks kept)."""
    p = Path(os.path.abspath(p))
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


# --------------------------------------------------------------- processes
@dataclass
class Run:
    engine: str
    rc: int
    wall: float
    maxrss_kib: int
    stdout: str
    stderr_path: Path


def _rss_guard(pid: int, limit_kib: int, stop: threading.Event, hit: list) -> None:
    """Kill pid when its RSS passes limit_kib (so that a peer running out of
    memory does not drive the shared machine into the OOM killer)."""
    status = Path(f"/proc/{pid}/status")
    while not stop.wait(0.25):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    if int(line.split()[1]) > limit_kib:
                        hit.append(int(line.split()[1]))
                        os.kill(pid, signal.SIGKILL)
                        return
                    break
        except (OSError, ValueError):
            return


def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat, all cores)."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None,
                 stderr_path: Path, timeout: float,
                 rss_limit_kib: int | None = None) -> tuple[int, float, int, str, float]:
    """Run cmd, return (exit code, wall seconds, ru_maxrss KiB, stdout, others'
    CPU share): the last is the busy CPU time of every other process during
    the run divided by wall x cores (0 = the machine ran nothing else).

    os.wait4 on the child's pid gives the resource usage of that process
    alone (ru_maxrss is KiB on Linux). A timer kills it after `timeout`, a
    poller when its RSS passes rss_limit_kib (exit code -9, noted in stderr)."""
    stdout_path = stderr_path.with_suffix(".out")
    full_env = dict(os.environ)
    for k in [k for k in full_env if k.startswith("AWS_")]:
        del full_env[k]
    full_env.update(env or {})
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        busy0 = cpu_busy_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=full_env, cwd=cwd)
        killer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
        killer.start()
        stop, hit = threading.Event(), []
        if rss_limit_kib:
            threading.Thread(target=_rss_guard, args=(proc.pid, rss_limit_kib, stop, hit),
                             daemon=True).start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
        finally:
            killer.cancel()
            stop.set()
        wall = time.perf_counter() - t0
        busy = cpu_busy_seconds() - busy0
    own = usage.ru_utime + usage.ru_stime
    others = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))
    if hit:
        with open(stderr_path, "a") as err:
            err.write(f"\n[bench] killed: RSS {hit[0] // 1024} MiB passed the guard "
                      f"({rss_limit_kib // 1024} MiB, --rss-guard-gib)\n")
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    return (proc.returncode, wall, usage.ru_maxrss, stdout_path.read_text(errors="replace"),
            others)


# --------------------------------------------------------------- machine
def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def binary_info(binary: Path) -> dict:
    """The binary's mtime and whether sources are newer (a stale build)."""
    mtime = binary.stat().st_mtime
    newer = []
    for pattern in ("src/**/*.rs", "queries/**/*.sql", "Cargo.toml", "Cargo.lock"):
        for p in REPO.glob(pattern):
            if p.stat().st_mtime > mtime:
                newer.append(rel(p))
    built_from = git("log", "-1", f"--until=@{int(mtime)}", "--format=%h %s", "--",
                     "src", "queries", "Cargo.toml", "Cargo.lock")
    return {
        "path": rel(binary),
        "built": dt.datetime.fromtimestamp(mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "built_from": built_from,
        "stale_sources": sorted(newer),
    }


# --------------------------------------------------------------- data
@dataclass
class Workload:
    preset: str
    events_per_day: int
    days: int
    seed: int
    dir: Path = field(init=False)

    def __post_init__(self):
        self.dir = WORK / f"{self.preset}-{self.events_per_day}"

    @property
    def name(self) -> str:
        n = self.events_per_day
        per_day = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (
            f"{n / 1_000_000:g}M" if n >= 100_000 else f"{n // 1000}k")
        return f"{self.days}d x {per_day}/day"

    @property
    def input(self) -> Path:
        return self.dir / "input"

    @property
    def marker(self) -> dict:
        return {"days": self.days, "events_per_day": self.events_per_day, "seed": self.seed,
                "start_date": START.isoformat()}

    @property
    def report_date(self) -> str:
        return (START + dt.timedelta(days=self.days - 1)).isoformat()

    def generate_cmd(self, binary: Path, output: Path) -> list[str]:
        return [str(binary), "generate", "--output", str(output),
                "--start-date", START.isoformat(), "--days", str(self.days),
                "--events-per-day", str(self.events_per_day), "--seed", str(self.seed)]


def find_existing(wl: Workload) -> Path | None:
    """An input directory of any preset generated with the same parameters."""
    for m in sorted(WORK.glob("*/workload.json")):
        try:
            if json.loads(m.read_text()) == wl.marker and (m.parent / "input").is_dir():
                return m.parent / "input"
        except (OSError, ValueError):
            continue
    return None


def ensure_data(wl: Workload, binary: Path) -> tuple[Path, float | None]:
    """The workload's input directory (generated if needed) and generation seconds."""
    found = find_existing(wl)
    if found is not None:
        log(f"{wl.name}: reusing {rel(found)}")
        return found, None
    wl.dir.mkdir(parents=True, exist_ok=True)
    tmp = wl.dir / "input.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(wl.input, ignore_errors=True)
    cmd = wl.generate_cmd(binary, tmp)
    log(f"{wl.name}: generating: {shlex.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"generate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    secs = time.perf_counter() - t0
    tmp.rename(wl.input)
    (wl.dir / "workload.json").write_text(json.dumps(wl.marker, indent=1) + "\n")
    log(f"{wl.name}: generated in {secs:.1f}s")
    return wl.input, secs


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def warm_cache(root: Path) -> int:
    """Read every input file once so every engine starts from a warm page cache."""
    total = 0
    for p in data_files(root):
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    return total


# --------------------------------------------------------------- S3
class S3:
    """One SeaweedFS server (tests/py/s3server.py) for the whole invocation, in
    a fresh bench/work/seaweedfs (its files do not survive a restart on new
    ports, so each invocation uploads the inputs again, untimed)."""

    def __init__(self):
        from s3server import S3Server
        shutil.rmtree(WORK / "seaweedfs", ignore_errors=True)
        self.server = S3Server(data_dir=WORK / "seaweedfs")

    def start(self):
        log("starting SeaweedFS (weed mini) on loopback")
        self.server.start()
        return self

    def stop(self):
        self.server.stop()

    def env(self) -> dict:
        return self.server.env()

    def sync(self, local: Path, prefix: str) -> float:
        """Upload files under local that are missing (or differ in size) under prefix."""
        import pyarrow.fs as pafs
        fs = self.server.filesystem()
        base = f"{S3_BUCKET}/{prefix}"
        have = {}
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                have[info.path[len(base) + 1:]] = info.size
        todo = [p for p in data_files(local)
                if have.get(p.relative_to(local).as_posix()) != p.stat().st_size]
        t0 = time.perf_counter()
        if todo:
            log(f"uploading {len(todo)} files to s3://{base}")
        for p in todo:
            with open(p, "rb") as src, fs.open_output_stream(
                    f"{base}/{p.relative_to(local).as_posix()}") as out:
                shutil.copyfileobj(src, out, 1 << 22)
        return time.perf_counter() - t0

    def clear(self, prefix: str):
        self.server.delete_prefix(f"s3://{S3_BUCKET}/{prefix}")

    def download(self, prefix: str, local: Path):
        shutil.rmtree(local, ignore_errors=True)
        self.server.download_dir(f"s3://{S3_BUCKET}/{prefix}", local)


class Ballista:
    """One scheduler and two executors (tests/py/ballista_cluster.py) from the
    benchmarked binary, for the whole invocation."""

    def __init__(self, binary: Path):
        from ballista_cluster import Cluster
        os.environ["CONVMART_BIN"] = str(binary)
        shutil.rmtree(WORK / "ballista", ignore_errors=True)
        per_executor = max(1, (os.cpu_count() or 2) // 2)
        # A generous timeout: other engines' runs starve the executors' heartbeats.
        self.cluster = Cluster(workdir=WORK / "ballista", env={}, concurrent_tasks=per_executor,
                               executor_timeout_secs=120)

    def start(self):
        log("starting a Ballista scheduler and 2 executors on loopback")
        self.cluster.start()
        return self

    def stop(self):
        self.cluster.stop()


BALLISTA: Ballista | None = None


# --------------------------------------------------------------- engines
def engine_cmd(engine: str, binary: Path, wl: Workload, data: Path, out: str) -> list[str]:
    date = wl.report_date
    common = ["--date", date, "--lookback-days", str(LOOKBACK)]
    threads = str(os.cpu_count() or 1)
    if engine == "convmart":
        return [str(binary), "run", "--input", str(data), "--output", out, *common]
    if engine == "convmart-1GiB":
        return [str(binary), "run", "--input", str(data), "--output", out, *common,
                "--memory-limit", MEMORY_LIMIT]
    if engine == "convmart-s3":
        return [str(binary), "run", "--input", f"s3://{S3_BUCKET}/{s3_prefix(wl)}/input",
                "--output", out, *common]
    if engine == "convmart-ballista":
        return [str(binary), "run", "--input", str(data), "--output", out, *common,
                "--engine", "ballista", "--scheduler", BALLISTA.cluster.url]
    if engine == "duckdb":
        return [PY, str(BENCH / "reference_duckdb.py"), "--input", str(data), "--output", out,
                *common, "--threads", threads]
    if engine == "polars":
        return [PY, str(BENCH / "reference_polars.py"), "--input", str(data), "--output", out,
                *common]
    if engine == "floor":
        return [str(binary), "scan-floor", "--input", str(data), *common]
    raise ValueError(engine)


def s3_prefix(wl: Workload) -> str:
    return f"bench/{wl.dir.name}"


def parse_stages(engine: str, stderr: str, stdout: str) -> dict[str, float]:
    """Per-stage seconds from an engine's own log."""
    stages: dict[str, float] = {}
    if engine.startswith("convmart"):
        for line in stderr.splitlines():
            m = re.search(r'stage="(\w+)"(?: table="(\w+)")?.*?elapsed_ms=(\d+)', line)
            if m:
                name = m.group(1) + (f":{m.group(2)}" if m.group(2) else "")
                stages[name] = stages.get(name, 0) + int(m.group(3)) / 1000
    elif engine in ("duckdb", "polars"):
        m = re.search(r"\] \d{4}-\d{2}-\d{2}: (\{.*\})\s*$", stderr, re.M)
        if m:
            try:
                stages = {k: float(v) for k, v in ast.literal_eval(m.group(1))["seconds"].items()}
            except (ValueError, SyntaxError, KeyError):
                pass
    elif engine == "floor":
        m = re.search(r"seconds=([\d.]+)", stdout)
        if m:
            stages["scan (internal)"] = float(m.group(1))
    return stages


def compare(left: Path, right: Path, date: str, names: tuple[str, str]) -> str | None:
    """None when all four tables are equal, else a description."""
    problems = []
    for table in TABLES:
        a = read_partition(left, table, date, allow_missing=True)
        b = read_partition(right, table, date, allow_missing=True)
        if a is None and b is None:
            continue
        if a is None or b is None:
            present = b if a is None else a
            if present.num_rows > 0:
                problems.append(f"{table}: no file in {names[0] if a is None else names[1]}")
            continue
        d = diff_tables(a, b, names=names)
        if d:
            problems.append(f"{table}: {d}")
    return "\n".join(problems) or None


# --------------------------------------------------------------- one workload
@dataclass
class Row:
    engine: str
    workload: str
    events_per_day: int
    walls: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    check: str = "n/a"
    stages: dict = field(default_factory=dict)

    @property
    def wall(self) -> float | None:
        return statistics.median(self.walls) if self.walls and not self.failures else None

    @property
    def peak_rss_mib(self) -> float | None:
        return max(self.rss_kib) / 1024 if self.rss_kib else None


def bench_workload(wl: Workload, args, binary: Path, s3: S3 | None, commands: list[str]) -> dict:
    data, gen_secs = ensure_data(wl, binary)
    engines = [e for e in args.engines if e != "polars" or (BENCH / "reference_polars.py").exists()]
    nbytes = warm_cache(data)
    nfiles = len([p for p in data_files(data) if p.suffix == ".parquet"])
    if s3 and "convmart-s3" in engines:
        up = s3.sync(data, f"{s3_prefix(wl)}/input")
        if up > 0.05:
            log(f"{wl.name}: upload took {up:.1f}s")
    out_root = wl.dir / "out"
    logs = wl.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = {e: Row(e, wl.name, wl.events_per_day) for e in engines}
    rows_read = None
    load_before = loadavg()
    for rep in range(args.repeat):
        for engine in engines:
            if engine == "convmart-s3":
                out = f"s3://{S3_BUCKET}/{s3_prefix(wl)}/out/{engine}"
                s3.clear(f"{s3_prefix(wl)}/out/{engine}")
                env = s3.env()
            else:
                out = str(out_root / engine)
                shutil.rmtree(out, ignore_errors=True)
                env = {"POLARS_MAX_THREADS": str(os.cpu_count() or 1)} if engine == "polars" else {}
            cmd = engine_cmd(engine, binary, wl, data, out)
            if rep == 0:
                shown = " ".join(f"{k}=..." for k in sorted(env) if k.startswith("AWS_"))
                commands.append(((shown + " ") if shown else "") + shlex.join(
                    [args.shown_bin if c == str(binary) else
                     rel(c) if c.startswith(str(REPO)) else c for c in cmd]))
                if engine == "polars":
                    commands[-1] = "POLARS_MAX_THREADS=" + env["POLARS_MAX_THREADS"] + " " + commands[-1]
            err = logs / f"{engine}-{rep + 1}.err"
            warm_cache(data)  # a peer's memory use may have evicted the inputs
            log(f"{wl.name}: {engine} (repeat {rep + 1}/{args.repeat})")
            if engine == "convmart-ballista":
                # Up only for its own runs: idle executors must not hold memory
                # or CPU while the other engines are measured.
                BALLISTA.start()
                cmd = engine_cmd(engine, binary, wl, data, out)
            rc, wall, rss, stdout, others = run_measured(cmd, env=env, cwd=wl.dir, stderr_path=err,
                                                 timeout=args.timeout,
                                                 rss_limit_kib=int(args.rss_guard_gib * 2**20))
            if engine == "convmart-ballista":
                BALLISTA.stop()
            r = rows[engine]
            r.rss_kib.append(rss)
            r.others.append(others)
            if rc != 0:
                tail = err.read_text(errors="replace")[-1500:]
                r.failures.append("killed by the RSS guard" if "passed the guard" in tail
                                  else "killed (timeout or OOM)" if rc == -9 else f"exit {rc}")
                log(f"  FAILED exit {rc} after {wall:.1f}s; stderr tail:\n{tail}")
                continue
            r.walls.append(wall)
            r.stages = parse_stages(engine, err.read_text(errors="replace"), stdout)
            log(f"  {wall:.2f}s, peak RSS {rss / 1024:.0f} MiB, other processes used "
                f"{others:.0%} of the CPUs")
            if engine == "convmart" and rows_read is None:
                man = Path(out) / "_runs" / f"event_date={wl.report_date}.json"
                rows_read = json.loads(man.read_text())["rows_read"]
            if engine == "floor" and rows_read is None:
                m = re.search(r"rows=(\d+)", stdout)
                rows_read = int(m.group(1)) if m else None
    load_after = loadavg()

    # equality with the reference (last repeat's tables)
    if REFERENCE in rows and rows[REFERENCE].walls:
        ref_out = out_root / REFERENCE
        rows[REFERENCE].check = "reference"
        for engine, r in rows.items():
            if engine in (REFERENCE, "floor") or not r.walls or r.failures:
                continue
            mine = out_root / engine
            if engine == "convmart-s3":
                s3.download(f"{s3_prefix(wl)}/out/{engine}", mine)
            log(f"{wl.name}: comparing {engine} with {REFERENCE}")
            d = compare(mine, ref_out, wl.report_date, (engine, REFERENCE))
            if d:
                r.check = "**MISMATCH**"
                (logs / f"{engine}-mismatch.txt").write_text(d + "\n")
                log(f"  MISMATCH {engine} vs {REFERENCE} (details in {rel(logs)}/"
                    f"{engine}-mismatch.txt):\n{d[:3000]}")
            else:
                r.check = "equal"
    for r in rows.values():
        if r.engine == "floor":
            r.check = "-"
        if r.failures:
            r.check = "**FAILED** (" + ", ".join(r.failures) + ")"
    return {"workload": wl, "rows": rows, "rows_read": rows_read, "files": nfiles,
            "bytes": nbytes, "generate_seconds": gen_secs, "load_before": load_before,
            "load_after": load_after}


# --------------------------------------------------------------- report
def fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def table_lines(results: list[dict]) -> list[str]:
    lines = ["| engine | workload | wall s | events/s | peak RSS MiB | ×DuckDB | ×floor | tables "
             "| others' CPU |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for res in results:
        rows = res["rows"]
        ref = rows.get(REFERENCE)
        floor = rows.get("floor")
        for r in rows.values():
            wall = r.wall
            walls = "" if len(r.walls) < 2 or wall is None else \
                f" ({min(r.walls):.2f}–{max(r.walls):.2f})"
            eps = res["rows_read"] / wall if wall and res["rows_read"] else None
            x_ref = wall / ref.wall if wall and ref and ref.wall else None
            x_floor = wall / floor.wall if wall and floor and floor.wall else None
            lines.append(
                f"| {r.engine} | {r.workload} | {fmt(wall, '.2f')}{walls} | "
                f"{fmt(eps, ',.0f')} | {fmt(r.peak_rss_mib, ',.0f')} | "
                f"{fmt(x_ref, '.2f')} | {fmt(x_floor, '.2f')} | {r.check} | "
                f"{fmt(max(r.others) if r.others else None, '.0%')} |")
    return lines


def targets(results: list[dict]) -> list[str]:
    """Issue 4's targets, evaluated on what this run measured."""
    out = []

    def verdict(ok):
        return "n/a" if ok is None else ("**holds**" if ok else "**does not hold**")

    for res in results:
        rows, name = res["rows"], res["workload"].name
        cm, ref, fl = rows.get("convmart"), rows.get(REFERENCE), rows.get("floor")
        s3, ml = rows.get("convmart-s3"), rows.get("convmart-1GiB")
        if cm and cm.wall and ref and ref.wall:
            x = cm.wall / ref.wall
            out.append(f"- {name}: convmart ≤ 0.8 × DuckDB (local): {x:.2f}× → {verdict(x <= 0.8)}")
        if cm and cm.wall and fl and fl.wall:
            x = cm.wall / fl.wall
            out.append(f"- {name}: convmart ≤ 2 × scan floor: {x:.2f}× → {verdict(x <= 2)}")
        if cm and cm.wall and s3 and s3.wall:
            x = s3.wall / cm.wall
            out.append(f"- {name}: S3 ≤ 1.3 × local: {x:.2f}× → {verdict(x <= 1.3)}")
        if ml:
            ok = bool(ml.walls) and not ml.failures and ml.peak_rss_mib < RSS_TARGET_MIB
            out.append(f"- {name}: `--memory-limit {MEMORY_LIMIT}` completes with peak RSS < "
                       f"1.5 GiB: {'completed' if ml.walls and not ml.failures else 'FAILED'}, "
                       f"{fmt(ml.peak_rss_mib, ',.0f')} MiB → {verdict(ok)}")
        bad = [r.engine for r in rows.values() if r.check.startswith("**")]
        if bad:
            out.append(f"- {name}: tables NOT equal / run failed for: {', '.join(bad)}")
    # scaling: wall time must grow no worse than linearly
    series = [(res["rows_read"], res["rows"]["convmart"].wall) for res in results
              if "convmart" in res["rows"] and res["rows"]["convmart"].wall and res["rows_read"]]
    if len(series) >= 2:
        series.sort()
        (n0, t0), (n1, t1) = series[0], series[-1]
        slope = math.log(t1 / t0) / math.log(n1 / n0)
        steps = ", ".join(f"{n / 1e6:.1f}M rows → {t:.2f}s ({t / n * 1e6:.3f} s per M)"
                          for n, t in series)
        out.append(f"- scaling (convmart local): {steps}; log-log slope {slope:.2f} "
                   f"(≤ 1 is linear or better; > 1.05 counts as worse than linear) → "
                   f"{verdict(slope <= 1.05)}")
        ref_series = sorted((res["rows_read"], res["rows"][REFERENCE].wall) for res in results
                            if REFERENCE in res["rows"] and res["rows"][REFERENCE].wall
                            and res["rows_read"])
        if len(ref_series) >= 2:
            (m0, u0), (m1, u1) = ref_series[0], ref_series[-1]
            out.append(f"- scaling (DuckDB, for comparison): log-log slope "
                       f"{math.log(u1 / u0) / math.log(m1 / m0):.2f}")
    return out


def stage_lines(results: list[dict]) -> list[str]:
    out = []
    for res in results:
        for r in res["rows"].values():
            if r.stages and r.engine in ("convmart", "convmart-s3", "duckdb", "polars"):
                parts = ", ".join(f"{k} {v:.2f}" for k, v in r.stages.items())
                out.append(f"- {r.engine}, {r.workload} (last repeat, seconds): {parts}")
    return out


HOW_TO_READ = """\
# convmart benchmark results

Written by `bench/run.sh` (`bench/run_bench.py`); each preset's section is
replaced by its latest run, other sections are kept.

**How to read this.** Every engine computes the same four tables (SPEC) for
the last generated date with `--lookback-days 30` over the same local Parquet
files (`convmart generate`, seed 42; the date 30 days before the report date
is not generated, so 30 partitions are read). *wall s* is the median wall time
of the whole process over the repeats (min–max in brackets), including start-up
and writing the output; *events/s* is input rows read (duplicates and rejected
rows included) divided by that time; *peak RSS* is the largest `ru_maxrss` of
the process over the repeats (for `convmart-s3` the SeaweedFS server's memory
is not included, but it shares the 2 cores). *×DuckDB* divides by the DuckDB
reference's wall time (`bench/reference_duckdb.py`, an independent SPEC
implementation, threads = nproc), *×floor* by `convmart scan-floor` (DataFusion
only reading and decoding the columns the job needs). *tables* says whether the
engine's four output tables equal DuckDB's (doubles within 1e-9 relative).
*others' CPU* is the busiest repeat's CPU time used by every other process
during the run, as a share of wall × cores (from /proc/stat minus the run's own
rusage): near 0% means the figure is clean; for `convmart-s3` it includes the
SeaweedFS server, which is part of that setup. `convmart-ballista` runs the
same job on a Ballista cluster on this machine (one `convmart scheduler`, two
`convmart executor`s with nproc/2 concurrent tasks each, started for each of
its runs and stopped after it): its *peak RSS* is the client's only, and the executors' work
shows up as *others' CPU*.
The page cache is warm (every input file is read before each run), runs are
sequential and interleaved across repeats; the load average before/after is
recorded because other work on this machine distorts wall times.
"""


def update_results(path: Path, preset: str, section: str) -> None:
    """Replace this preset's block in results.md, keep the others (and any
    hand-written `<!-- BEGIN notes -->` block)."""
    blocks: dict[str, str] = {}
    if path.exists():
        for m in re.finditer(r"<!-- BEGIN (\S+) -->\n(.*?)<!-- END \1 -->\n", path.read_text(), re.S):
            blocks[m.group(1)] = m.group(2)
    blocks[preset] = section
    order = [p for p in PRESETS if p in blocks] + sorted(
        k for k in blocks if k not in PRESETS and k != "notes")
    if "notes" in blocks:
        order.append("notes")
    text = HOW_TO_READ + "".join(
        f"\n<!-- BEGIN {k} -->\n{blocks[k]}<!-- END {k} -->\n" for k in order)
    path.write_text(text)


def render_section(preset: str, args, results: list[dict], commands: list[str], machine: dict,
                   binfo: dict, started: str, ended: str) -> str:
    L = [f"## {preset}: {', '.join(r['workload'].name for r in results)}", ""]
    L.append(f"- run: {started} → {ended}, `{' '.join(['bench/run.sh', *sys.argv[1:]])}`, "
             f"repeat {args.repeat}")
    L.append(f"- machine: {machine['nproc']} cores ({machine['cpu']}), "
             f"{machine['memory_gib']} GiB RAM, Linux {machine['kernel']}, Python "
             f"{machine['python']}")
    dirty = git("status", "--porcelain", "--", "src", "queries", "Cargo.toml", "Cargo.lock")
    L.append(f"- git: {git('rev-parse', '--short', 'HEAD')} ({git('log', '-1', '--format=%s')})"
             + (" — **src/queries have uncommitted changes**" if dirty else ""))
    L.append(f"- binary: `{binfo['path']}` built {binfo['built']}, so from the sources of "
             f"`{binfo['built_from'][:100]}` (the last commit to src/, queries/, Cargo.* "
             f"before the build), sha256 {binfo['sha256']}… (a copy of it ran)"
             + (f" — **older than {', '.join(binfo['stale_sources'][:5])}**"
                if binfo["stale_sources"] else ""))
    import duckdb  # noqa: PLC0415
    versions = f"duckdb {duckdb.__version__}"
    try:
        import polars  # noqa: PLC0415
        versions += f", polars {polars.__version__}"
    except ImportError:
        pass
    L.append(f"- peers: {versions}")
    for res in results:
        gen = (f"generated in {res['generate_seconds']:.0f}s" if res["generate_seconds"]
               else "reused")
        L.append(f"- {res['workload'].name}: {fmt(res['rows_read'], ',')} rows in "
                 f"{res['files']} files, {res['bytes'] / 2**20:,.0f} MiB, report date "
                 f"{res['workload'].report_date} ({gen}); load average before "
                 f"{res['load_before']}, after {res['load_after']}")
    L += ["", *table_lines(results), ""]
    t = targets(results)
    if t:
        L += ["Targets (issue 4):", "", *t, ""]
    s = stage_lines(results)
    if s:
        L += ["Stage times from the engines' own logs:", "", *s, ""]
    L += ["Commands (first workload; the others differ only in paths):", "", "```",
          *dict.fromkeys(commands), "```", ""]
    return "\n".join(L)


# --------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", action="append", choices=list(PRESETS),
                    help="workload preset (repeatable; default XS)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine; median (default 3)")
    ap.add_argument("--max-per-day", type=int,
                    help="skip scaling sizes above this many events/day")
    ap.add_argument("--engines", default=",".join(ALL_ENGINES),
                    help=f"comma-separated subset of {','.join(ALL_ENGINES)}")
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help="convmart binary")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--rss-guard-gib", type=float, default=None,
                    help="kill a run whose RSS passes this (default: 90%% of RAM)")
    args = ap.parse_args()
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(args.engines) - set(ALL_ENGINES)
    if unknown:
        ap.error(f"unknown engines: {', '.join(sorted(unknown))}")
    presets = args.preset or ["XS"]
    binary = args.bin if args.bin.is_absolute() else (Path.cwd() / args.bin)
    if not binary.is_file():
        ap.error(f"{binary} not found: run bench/run.sh (it builds it) or "
                 f"`cargo build --release --locked --features ballista --target-dir target/bench`")
    binfo = binary_info(binary)
    # Run a private copy: a rebuild of target/bench during the benchmark must
    # not change the binary between engines or repeats.
    import hashlib  # noqa: PLC0415
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    binfo["sha256"] = digest[:16]
    snap = WORK / "bin" / f"convmart-{digest[:16]}"
    if not snap.exists():
        snap.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, snap.with_suffix(".tmp"))
        snap.with_suffix(".tmp").rename(snap)
    args.shown_bin = rel(binary)
    binary = snap
    if binfo["stale_sources"]:
        log(f"WARNING: {binfo['path']} is older than {', '.join(binfo['stale_sources'][:5])}")
    machine = machine_info()
    if args.rss_guard_gib is None:
        args.rss_guard_gib = 0.9 * machine["memory_gib"]
    la = loadavg()
    if float(la.split()[0]) > 0.5 * (machine["nproc"] or 1):
        log(f"WARNING: load average {la} on {machine['nproc']} cores: wall times will be noisy")

    s3 = None
    global BALLISTA
    exit_code = 0
    try:
        if "convmart-s3" in args.engines:
            s3 = S3().start()
        if "convmart-ballista" in args.engines:
            BALLISTA = Ballista(binary)  # started around each of its runs
        for preset in presets:
            started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            sizes = [n for n in PRESETS[preset] if not args.max_per_day or n <= args.max_per_day]
            if not sizes:
                log(f"{preset}: every size is above --max-per-day; skipped")
                continue
            results, commands = [], []
            for n in sizes:
                wl = Workload(preset, n, DAYS, SEED)
                results.append(bench_workload(wl, args, binary, s3, commands))
            ended = dt.datetime.now(dt.timezone.utc).strftime("%H:%M UTC")
            section = render_section(preset, args, results, commands, machine, binfo,
                                     started, ended)
            update_results(args.results, preset, section)
            print(f"\n## {preset}\n")
            print("\n".join(table_lines(results)))
            t = targets(results)
            if t:
                print("\n" + "\n".join(t))
            if any(r.check.startswith("**") for res in results for r in res["rows"].values()):
                exit_code = 1
                print(f"\n!!! {preset}: an engine failed or its tables differ from "
                      f"{REFERENCE}'s; see the tables column and bench/work/*/logs/",
                      file=sys.stderr)
        print(f"\nresults written to {rel(args.results)}")
    finally:
        if s3:
            s3.stop()
        if BALLISTA:
            BALLISTA.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
