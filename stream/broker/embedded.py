"""EmbeddedBroker: a single-node Apache Kafka broker (KRaft, broker+controller in one JVM).

Runs `java -cp '<libs>/*' kafka.Kafka <data dir>/server.properties` as a detached
background process for local runs and integration tests. The jars come from Maven
Central once per machine (install.py).

Data dir layout (default ~/.cache/seqstream/broker/<port>):
    server.properties  rendered from deploy/kafka/server.properties on every start (mode 0600:
                       it holds the SASL users' passwords when there are any)
    broker.json        cluster id + controller port, kept across restarts
    broker.pid         pid of the running JVM (stale files are detected and removed)
    broker.out         JVM stdout/stderr
    server.log         broker log (log4j2, deploy/kafka/log4j2.properties)
    kraft/             log.dirs: KRaft metadata log and topic data

Stdlib only, plus kafka-python for the readiness check (a metadata request).
Set SEQSTREAM_BROKER=host:port to use an external broker instead (stream/kafka.py).
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Iterator

from stream.broker.install import (
    CACHE_ROOT, LOG4J2_CONFIG, PROPS_TEMPLATE, BrokerError, check_java, ensure_jars, kafka_version,
)
from stream.broker.process import (
    HOST, free_port, pid_alive, pid_cmdline, port_bindable, port_open, probe_metadata, tail,
)

log = logging.getLogger("stream.broker")

DEFAULT_PORT = 9092
MAIN_CLASS = "kafka.Kafka"  # still the broker entry point in Kafka 4.x
STORAGE_TOOL = "kafka.tools.StorageTool"  # 4.x: in kafka_2.13.jar (kafka-tools.jar is not needed)


def _new_cluster_id() -> str:
    # Same shape as `kafka-storage random-uuid`: 16 random bytes, url-safe base64, no padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


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
    sasl_users: {user: password}: also open a SASL_PLAINTEXT listener (mechanism PLAIN) for
        them on sasl_port (default: saved in broker.json, else port+2 when free, else any free
        port). The PLAINTEXT listener stays (readiness probe, broker-internal traffic).
    """

    port: int = field(default_factory=_env_port)
    data_dir: Path | None = None
    controller_port: int | None = None
    host: str = HOST
    heap: str = field(default_factory=lambda: os.environ.get("SEQSTREAM_BROKER_HEAP", "512m"))
    version: str = field(default_factory=kafka_version)
    libs_dir: Path | None = None
    node_id: int = 1
    sasl_users: dict[str, str] | None = field(default=None, repr=False)
    sasl_port: int | None = None
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
    def sasl_bootstrap(self) -> str:
        """host:port of the SASL_PLAINTEXT listener (known once started)."""
        if not self.sasl_users or not self.sasl_port:
            raise BrokerError("this broker has no SASL listener (EmbeddedBroker(sasl_users=...))")
        return f"{self.host}:{self.sasl_port}"

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
        cmd = pid_cmdline(pid)
        ours = cmd is None or (MAIN_CLASS in cmd and str(self.props_file) in cmd)
        if pid_alive(pid) and ours:
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
                if self.sasl_users and not self.sasl_port:
                    self.sasl_port = self._load_state().get("sasl_port")
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
            if self.sasl_users:
                self.sasl_port = self._pick_sasl_port(state, cport)
                state["sasl_port"] = self.sasl_port
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
            text = tail(path, lines)
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
            if p and 0 < int(p) < 65536 and int(p) != self.port and port_bindable(self.host, int(p)):
                return int(p)
        if self.controller_port:
            raise BrokerError(f"controller port {self.controller_port} is in use")
        return free_port(self.host)

    def _pick_sasl_port(self, state: dict[str, Any], controller_port: int) -> int:
        taken = (self.port, controller_port)
        for p in (self.sasl_port, state.get("sasl_port"), self.port + 2):
            if p and 0 < int(p) < 65536 and int(p) not in taken and port_bindable(self.host, int(p)):
                return int(p)
        if self.sasl_port:
            raise BrokerError(f"SASL port {self.sasl_port} is in use")
        return free_port(self.host)

    def _sasl_props(self) -> tuple[str, str]:
        """(extra listeners, SASL config lines) for server.properties; empty without users."""
        if not self.sasl_users:
            return "", ""
        for user, password in self.sasl_users.items():
            # the JAAS line quotes them: no quote, backslash, semicolon or line break
            if not user or any(c in f"{user}{password}" for c in '"\\;\r\n') or any(c.isspace() for c in user):
                raise BrokerError(f"SASL user {user!r}: names and passwords must not contain quotes, "
                                  "backslashes, semicolons or line breaks (names: no spaces)")
        users = " ".join(f'user_{u}="{p}"' for u, p in sorted(self.sasl_users.items()))
        jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
        config = ("sasl.enabled.mechanisms=PLAIN\n"
                  "listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN\n"
                  f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}\n")
        return f",SASL_PLAINTEXT://{self.host}:{self.sasl_port}", config

    def _render_props(self, controller_port: int) -> None:
        try:
            template = Template(PROPS_TEMPLATE.read_text())
        except OSError as e:
            raise BrokerError(f"cannot read {PROPS_TEMPLATE}: {e.strerror}") from e
        extra_listeners, sasl_config = self._sasl_props()
        try:
            text = template.substitute(node_id=self.node_id, port=self.port,
                                       controller_port=controller_port, log_dirs=str(self.kraft_dir),
                                       extra_listeners=extra_listeners, sasl_config=sasl_config)
        except (KeyError, ValueError) as e:
            raise BrokerError(f"bad placeholder in {PROPS_TEMPLATE}: {e}") from None
        # 0600 before the first byte: the passwords of the SASL users are in it
        fd = os.open(self.props_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

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
        return pid_alive(pid)

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
