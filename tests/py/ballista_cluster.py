"""A real Ballista cluster on loopback for the tests: one `convmart scheduler`
and N `convmart executor` processes, each on free 127.0.0.1 ports, started
from the binary under test (built with `--features ballista`) and killed with
SIGKILL when done. Executors get the S3 server's AWS_* variables, as a
deployment would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import convmart_bin
from s3server import _die_with_parent


def free_ports(n: int) -> list[int]:
    held, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    return ports


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Cluster:
    workdir: Path
    env: dict[str, str]
    executors: int = 2
    concurrent_tasks: int = 2
    executor_timeout_secs: int = 10
    scheduler_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"df://127.0.0.1:{self.scheduler_port}"

    def _spawn(self, name: str, *args: str) -> None:
        log = self.workdir / f"{name}.log"
        env = {**os.environ, **self.env, "RUST_BACKTRACE": "0"}
        self.logs[name] = log
        self.procs[name] = subprocess.Popen(
            [str(convmart_bin()), *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env=env, preexec_fn=_die_with_parent)

    def start(self, timeout: float = 60) -> "Cluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.scheduler_port,) = free_ports(1)
        self._spawn("scheduler", "scheduler", "--port", str(self.scheduler_port),
                    "--executor-timeout-secs", str(self.executor_timeout_secs))
        self._wait(lambda: _listening(self.scheduler_port), "scheduler", timeout)
        for i in range(self.executors):
            flight, grpc = free_ports(2)
            self._spawn(f"executor{i}", "executor", "--scheduler", self.url,
                        "--port", str(flight), "--grpc-port", str(grpc),
                        "--concurrent-tasks", str(self.concurrent_tasks), "--heartbeat-secs", "2",
                        "--work-dir", str(self.workdir / f"work{i}"))
            self._wait(lambda: _listening(flight), f"executor{i}", timeout)
        # Registered once the scheduler has seen a heartbeat from each.
        self._wait(lambda: self.log("scheduler").count("egister") >= self.executors
                   or all("egist" in self.log(f"executor{i}") for i in range(self.executors)),
                   "executor registration", timeout)
        return self

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited {p.returncode}:\n{self.log(name)[-3000:]}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready within {timeout}s:\n"
                           + "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.procs))

    def log(self, name: str) -> str:
        p = self.logs.get(name)
        return p.read_text(errors="replace") if p and p.exists() else ""

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        self.procs.clear()  # a later start() must not see these as crashed


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """Scheduler + two executors for a test module (reads S3 via `s3`'s settings)."""
    c = Cluster(workdir=tmp_path_factory.mktemp("ballista"), env=s3.env())
    try:
        c.start()
    except RuntimeError as e:
        c.stop()
        pytest.fail(f"could not start the Ballista cluster: {e}", pytrace=False)
    try:
        yield c
    finally:
        c.stop()
