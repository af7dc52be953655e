"""The broker JVM as an operating-system process: free and open ports, whether a pid is alive
and what it runs, the tail of its log, and the readiness probe (a metadata request).

Stdlib only, plus kafka-python for the probe."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # loopback only: this broker is never meant to be reachable from outside


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


def port_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def pid_alive(pid: int) -> bool:
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


def pid_cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def tail(path: Path, lines: int = 25) -> str:
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
