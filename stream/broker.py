"""Embedded single-node Apache Kafka broker (KRaft, broker+controller in one JVM).

Runs `java -cp '<libs>/*' kafka.Kafka <data dir>/server.properties` as a detached
background process for local runs and integration tests. The jars come from Maven
Central once per machine (deploy/kafka/pom.xml -> ~/.cache/seqstream/kafka/<ver>/libs).

Data dir layout (default ~/.cache/seqstream/broker/<port>):
    server.properties  rendered from deploy/kafka/server.properties on every start
    broker.json        cluster id + controller port, kept across restarts
    broker.pid         pid of the running JVM (stale files are detected and removed)
    broker.out         JVM stdout/stderr
    server.log         broker log (log4j2, deploy/kafka/log4j2.properties)
    kraft/             log.dirs: KRaft metadata log and topic data

Stdlib only, plus kafka-python for the readiness check (a metadata request).
Set SEQSTREAM_BROKER=host:port to use an external broker instead (resolve_bootstrap).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Iterator

log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "kafka"
POM = DEPLOY_DIR / "pom.xml"
PROPS_TEMPLATE = DEPLOY_DIR / "server.properties"
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"
CACHE_ROOT = Path(os.environ.get("SEQSTREAM_CACHE", Path.home() / ".cache" / "seqstream"))
DEFAULT_PORT = 9092
HOST = "127.0.0.1"  # loopback only: this broker is never meant to be reachable from outside
MAIN_CLASS = "kafka.Kafka"  # still the broker entry point in Kafka 4.x
STORAGE_TOOL = "kafka.tools.StorageTool"  # 4.x: in kafka_2.13.jar (kafka-tools.jar is not needed)
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+


class BrokerError(RuntimeError):
    """A broker operation failed. str() starts with a one-line reason."""


# --------------------------------------------------------------------------- helpers


def pom_kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in deploy/kafka/pom.xml (<kafka.version>)."""
    try:
        m = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    except OSError as e:
        raise BrokerError(f"cannot read {pom}: {e.strerror} (is the repo checkout complete?)") from e
    if not m:
        raise BrokerError(f"no <kafka.version> property in {pom}")
    return m.group(1)


def kafka_version() -> str:
    return os.environ.get("SEQSTREAM_KAFKA_VERSION") or pom_kafka_version()


def default_libs_dir(version: str | None = None) -> Path:
    return CACHE_ROOT / "kafka" / (version or kafka_version()) / "libs"


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _port_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if not path:
        raise BrokerError(f"`{name}` not found on PATH; it is needed {why}")
    return path


def check_java() -> str:
    """Path of a `java` that is new enough for the broker, else BrokerError."""
    java = _require_tool("java", f"to run the Kafka broker (Java {MIN_JAVA}+)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if m:
        major = int(m.group(1))
        if major == 1 and m.group(2):  # "1.8.0_..." style
            major = int(m.group(2))
        if major < MIN_JAVA:
            raise BrokerError(f"Kafka {kafka_version()} needs Java {MIN_JAVA}+, found Java {major} at {java}")
    return java


def ensure_jars(version: str | None = None, libs_dir: Path | None = None) -> Path:
    """Make sure the broker jars are in libs_dir (running Maven once); return libs_dir.

    Skipped when the dir already holds kafka_2.13-<version>.jar. Maven copies into a
    temp dir that is renamed into place, so a concurrent or interrupted fetch never
    leaves a half-filled libs dir behind.
    """
    version = version or kafka_version()
    libs = Path(libs_dir) if libs_dir else default_libs_dir(version)
    if list(libs.glob(f"kafka_2.13-{version}.jar")):
        return libs
    mvn = _require_tool("mvn", "once to fetch the Kafka jars from Maven Central (apt-get install maven)")
    if not POM.is_file():
        raise BrokerError(f"missing {POM}; run from a seqstream checkout")
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="libs.tmp-", dir=libs.parent))
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", f"-Dkafka.version={version}"]
    log.info("fetching Kafka %s jars into %s (once per machine)", version, libs)
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0 or not list(tmp.glob(f"kafka_2.13-{version}.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"Maven could not fetch Kafka {version} jars (rc={res.returncode})\n{tail}")
    try:
        tmp.rename(libs)
    except OSError:  # another process won the race (or a stale libs dir without the jar)
        if list(libs.glob(f"kafka_2.13-{version}.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(libs, ignore_errors=True)
            tmp.rename(libs)
    log.info("fetched Kafka %s jars in %.1fs", version, time.monotonic() - t0)
    return libs


def _new_cluster_id() -> str:
    # Same shape as `kafka-storage random-uuid`: 16 random bytes, url-safe base64, no padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child of this very process, not yet reaped) still "exists". But a JVM
    # whose main thread has exited also shows state Z while its other threads run on, so only
    # a Z with a single thread left counts as dead.
    with contextlib.suppress(OSError, ValueError):
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        if status.get("State", "").strip().startswith("Z") and int(status.get("Threads", "1")) <= 1:
            return False
    return True


def _pid_cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def probe_metadata(bootstrap: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Ask the broker for cluster metadata; the cluster description, or None if it does not answer.

    A plain TCP check comes first so that a closed port costs no kafka-python
    connection retries (and no warnings from its logger).
    """
    host, _, port = bootstrap.rpartition(":")
    if not port_open(host, int(port), timeout_s=min(timeout_s, 1.0)):
        return None
    from kafka import KafkaAdminClient  # lazy: keep `import stream.broker` cheap
    from kafka.errors import KafkaConfigurationError, KafkaError

    ms = max(1000, int(timeout_s * 1000))
    conf: dict[str, Any] = {"bootstrap_servers": bootstrap, "client_id": "seqstream-broker-probe",
                            "request_timeout_ms": ms}
    # kafka-python 3.x renamed the bootstrap/version-probe timeout; pass whichever exists.
    for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):
        if key in KafkaAdminClient.DEFAULT_CONFIG:
            conf[key] = ms
    admin = None
    try:
        admin = KafkaAdminClient(**conf)
        desc = admin.describe_cluster()
    except KafkaConfigurationError:
        raise  # our bug, not "broker not ready"
    except (KafkaError, OSError, TimeoutError):  # not (yet) answering
        return None
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
    if not desc.get("brokers") or desc.get("controller_id") in (None, -1):
        return None
    return desc


# --------------------------------------------------------------------------- broker


@dataclass(frozen=True)
class BrokerStatus:
    running: bool  # our JVM is alive
    ready: bool  # and it answers metadata requests
    pid: int | None
    bootstrap: str
    data_dir: Path
    already_running: bool = False  # set by start() when it found a running broker


def _env_port() -> int:
    raw = os.environ.get("SEQSTREAM_BROKER_PORT")
    if not raw:
        return DEFAULT_PORT
    try:
        return int(raw)
    except ValueError:
        raise BrokerError(f"SEQSTREAM_BROKER_PORT={raw!r} is not a port number") from None


@dataclass
class EmbeddedBroker:
    """A single-node KRaft broker on 127.0.0.1:port, state in data_dir.

    port: PLAINTEXT listener (default 9092 or $SEQSTREAM_BROKER_PORT).
    data_dir: default $SEQSTREAM_BROKER_DIR or ~/.cache/seqstream/broker/<port>.
    controller_port: CONTROLLER listener; default: the one saved in broker.json,
        else port+1 when free, else any free port.
    """

    port: int = field(default_factory=_env_port)
    data_dir: Path | None = None
    controller_port: int | None = None
    host: str = HOST
    heap: str = field(default_factory=lambda: os.environ.get("SEQSTREAM_BROKER_HEAP", "512m"))
    version: str = field(default_factory=kafka_version)
    libs_dir: Path | None = None
    node_id: int = 1
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.host not in ("127.0.0.1", "localhost"):
            raise BrokerError(f"the embedded broker binds to 127.0.0.1 only, not {self.host!r}")
        self.host = HOST
        if not 0 < int(self.port) < 65536:
            raise BrokerError(f"bad port {self.port}")
        self.port = int(self.port)
        if self.data_dir is None:
            env = os.environ.get("SEQSTREAM_BROKER_DIR")
            self.data_dir = Path(env) if env else CACHE_ROOT / "broker" / str(self.port)
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    # ---- paths
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def pid_file(self) -> Path:
        return self.dir / "broker.pid"

    @property
    def props_file(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    @property
    def out_file(self) -> Path:
        return self.dir / "broker.out"

    @property
    def state_file(self) -> Path:
        return self.dir / "broker.json"

    @property
    def kraft_dir(self) -> Path:
        return self.dir / "kraft"

    # ---- public API
    def status(self) -> BrokerStatus:
        pid = self.pid()
        ready = pid is not None and probe_metadata(self.bootstrap, timeout_s=3.0) is not None
        return BrokerStatus(running=pid is not None, ready=ready, pid=pid,
                            bootstrap=self.bootstrap, data_dir=self.dir)

    def pid(self) -> int | None:
        """Pid of our running broker JVM, or None. Removes a stale pid file."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        cmd = _pid_cmdline(pid)
        ours = cmd is None or (MAIN_CLASS in cmd and str(self.props_file) in cmd)
        if _pid_alive(pid) and ours:
            return pid
        log.info("removing stale pid file %s (pid %d is gone or not our broker)", self.pid_file, pid)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        return None

    def start(self, timeout_s: float = 60.0) -> BrokerStatus:
        """Start the broker (idempotent) and wait until it answers a metadata request.

        Fetches jars and formats the KRaft storage on first use. Raises BrokerError with
        a one-line reason (plus the broker log tail) if it is not up within timeout_s.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            pid = self.pid()
            if pid is not None:
                deadline = time.monotonic() + timeout_s
                self._wait_ready(pid, deadline, started_here=False)
                log.info("broker already running at %s (pid %d)", self.bootstrap, pid)
                return BrokerStatus(True, True, pid, self.bootstrap, self.dir, already_running=True)
            if port_open(self.host, self.port):
                raise BrokerError(f"port {self.port} is in use by another process (not the broker in {self.dir}); "
                                  "use --port / SEQSTREAM_BROKER_PORT, or SEQSTREAM_BROKER=host:port for an external broker")
            java = check_java()
            libs = ensure_jars(self.version, self.libs_dir)
            state = self._load_state()
            cport = self._pick_controller_port(state)
            state.update(controller_port=cport, port=self.port, version=self.version)
            self._render_props(cport)
            if not (self.kraft_dir / "meta.properties").is_file():
                state["cluster_id"] = state.get("cluster_id") or _new_cluster_id()
                self._format(java, libs, state["cluster_id"])
            self._save_state(state)
            deadline = time.monotonic() + timeout_s
            pid = self._launch(java, libs)
            self._wait_ready(pid, deadline, started_here=True)
            log.info("broker up at %s (pid %d, data %s)", self.bootstrap, pid, self.dir)
            return BrokerStatus(True, True, pid, self.bootstrap, self.dir)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker (SIGTERM: controlled shutdown; SIGKILL after timeout_s).

        True if a broker was running and is now stopped, False if none was running.
        """
        with self._lock():
            pid = self.pid()
            if pid is None:
                return False
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout_s):
                log.warning("broker pid %d did not stop in %.0fs; killing it", pid, timeout_s)
                self._signal(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10.0):
                    raise BrokerError(f"broker pid {pid} survived SIGKILL")
            with contextlib.suppress(OSError):
                self.pid_file.unlink()
            self._proc = None
            return True

    def log_tail(self, lines: int = 25) -> str:
        parts = []
        for path in (self.log_file, self.out_file):
            text = _tail(path, lines)
            if text.strip():
                parts.append(f"--- tail of {path} ---\n{text}")
        return "\n".join(parts) or f"(no broker log in {self.dir})"

    # ---- internals
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Serialises start/stop on one data dir across processes (e.g. parallel test sessions).
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_file)

    def _pick_controller_port(self, state: dict[str, Any]) -> int:
        candidates = [self.controller_port, state.get("controller_port"), self.port + 1]
        for p in candidates:
            if p and 0 < int(p) < 65536 and int(p) != self.port and _port_bindable(self.host, int(p)):
                return int(p)
        if self.controller_port:
            raise BrokerError(f"controller port {self.controller_port} is in use")
        return free_port(self.host)

    def _render_props(self, controller_port: int) -> None:
        try:
            template = Template(PROPS_TEMPLATE.read_text())
        except OSError as e:
            raise BrokerError(f"cannot read {PROPS_TEMPLATE}: {e.strerror}") from e
        try:
            text = template.substitute(node_id=self.node_id, port=self.port,
                                       controller_port=controller_port, log_dirs=str(self.kraft_dir))
        except (KeyError, ValueError) as e:
            raise BrokerError(f"bad placeholder in {PROPS_TEMPLATE}: {e}") from None
        self.props_file.write_text(text)

    def _java_cmd(self, java: str, libs: Path, main: str, heap: str | None = None) -> list[str]:
        return [java, f"-Xmx{heap or self.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dkafka.logs.dir={self.dir}",
                "-cp", f"{libs}/*", main]

    def _format(self, java: str, libs: Path, cluster_id: str) -> None:
        # Static quorum (controller.quorum.voters in the props), so a cluster id is all
        # `format` needs; no --standalone / --initial-controllers.
        cmd = self._java_cmd(java, libs, STORAGE_TOOL, heap="256m") + [
            # "=": an id may start with "-" (1 in 64 random ids), which a separate argument would
            # pass off as an option ("--cluster-id: expected one argument")
            "format", "--config", str(self.props_file), f"--cluster-id={cluster_id}", "--ignore-formatted"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"formatting KRaft storage in {self.kraft_dir} failed (rc={res.returncode})\n{tail}")

    def _launch(self, java: str, libs: Path) -> int:
        cmd = self._java_cmd(java, libs, MAIN_CLASS) + [str(self.props_file)]
        with self.out_file.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            out.flush()
            # New session: the broker outlives this process (CLI) and ignores its Ctrl-C.
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=self.dir, start_new_session=True, close_fds=True)
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    def _wait_ready(self, pid: int, deadline: float, started_here: bool) -> None:
        while True:
            if not self._alive(pid):
                with contextlib.suppress(OSError):
                    self.pid_file.unlink()
                raise BrokerError(f"Kafka broker (pid {pid}) exited during startup on {self.bootstrap}\n"
                                  + self.log_tail())
            left = deadline - time.monotonic()
            if probe_metadata(self.bootstrap, timeout_s=max(1.0, min(5.0, left))) is not None:
                return
            if time.monotonic() >= deadline:
                if started_here:  # don't leave a half-started JVM behind
                    with contextlib.suppress(Exception):
                        self._signal(pid, signal.SIGKILL)
                        self._wait_exit(pid, 10.0)
                        self.pid_file.unlink()
                raise BrokerError(f"Kafka broker on {self.bootstrap} did not answer a metadata request within "
                                  f"the timeout{' and was killed' if started_here else ''}\n" + self.log_tail())
            time.sleep(0.25)

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _pid_alive(pid)

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._alive(pid):
                return True
            time.sleep(0.1)
        return not self._alive(pid)


# --------------------------------------------------------------------------- entry points


def resolve_bootstrap(start: bool = True, timeout_s: float = 60.0) -> str:
    """host:port of the broker to use: $SEQSTREAM_BROKER if set (nothing is started),
    else the embedded broker (started if needed, unless start=False)."""
    external = os.environ.get("SEQSTREAM_BROKER", "").strip()
    if external:
        external = external.removeprefix("kafka://")
        if ":" not in external:
            raise BrokerError(f"SEQSTREAM_BROKER={external!r} must be host:port")
        return external
    broker = EmbeddedBroker()
    if start:
        broker.start(timeout_s=timeout_s)
    return broker.bootstrap


def _broker_from_args(args: argparse.Namespace) -> EmbeddedBroker:
    kwargs: dict[str, Any] = {}
    if args.port is not None:
        kwargs["port"] = args.port
    if args.data_dir is not None:
        kwargs["data_dir"] = Path(args.data_dir)
    return EmbeddedBroker(**kwargs)


def _fail(err: BrokerError) -> SystemExit:
    return SystemExit(f"seqstream broker: {err}")


def _cmd_start(args: argparse.Namespace) -> int:
    try:
        broker = _broker_from_args(args)
        st = broker.start(timeout_s=args.timeout or 60.0)
    except BrokerError as e:
        raise _fail(e) from None
    what = "already running" if st.already_running else "started"
    print(f"broker {what}: {st.bootstrap} (pid {st.pid}, data {st.data_dir})", file=sys.stderr)
    print(st.bootstrap)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        broker = _broker_from_args(args)
        stopped = broker.stop(timeout_s=args.timeout or 30.0)
    except BrokerError as e:
        raise _fail(e) from None
    print(f"broker {'stopped' if stopped else 'was not running'}: {broker.bootstrap}", file=sys.stderr)
    print(broker.bootstrap)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        st = _broker_from_args(args).status()
    except BrokerError as e:
        raise _fail(e) from None
    if st.running and st.ready:
        state = "running"
    elif st.running:
        state = "starting (or not answering)"
    else:
        state = "not running"
    pid = f", pid {st.pid}" if st.pid else ""
    print(f"broker {state}: {st.bootstrap}{pid} (data {st.data_dir})", file=sys.stderr)
    print(st.bootstrap)
    return 0 if st.running and st.ready else 1


def add_cli(subparsers: Any) -> None:
    """Add `broker start|stop|status [--port N] [--data-dir DIR] [--timeout S]`.

    Each action sets args.func(args) -> int exit code and prints the bootstrap address
    on stdout (human detail on stderr); `status` exits 1 when the broker is not up.
    """
    p = subparsers.add_parser("broker", help="embedded single-node Kafka broker (KRaft)")
    actions = p.add_subparsers(dest="broker_action", metavar="{start,stop,status}", required=True)
    for name, func, hlp in (("start", _cmd_start, "start it (idempotent) and wait until it answers"),
                            ("stop", _cmd_stop, "stop it (controlled shutdown)"),
                            ("status", _cmd_status, "exit 0 if it is up, 1 if not")):
        a = actions.add_parser(name, help=hlp)
        a.add_argument("--port", type=int, default=None,
                       help=f"PLAINTEXT port (default $SEQSTREAM_BROKER_PORT or {DEFAULT_PORT})")
        a.add_argument("--data-dir", default=None,
                       help="state dir (default $SEQSTREAM_BROKER_DIR or ~/.cache/seqstream/broker/<port>)")
        a.add_argument("--timeout", type=float, default=None, help="seconds to wait (start 60, stop 30)")
        a.set_defaults(func=func)


def main(argv: list[str] | None = None) -> int:
    """`python -m stream.broker start|stop|status ...` (same as `seqstream broker ...`)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # our progress lines, not kafka-python's chatter
    parser = argparse.ArgumentParser(prog="seqstream")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["broker", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
