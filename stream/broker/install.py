"""The broker's jars and Java: Kafka jars from Maven Central, once per machine
(deploy/kafka/pom.xml -> ~/.cache/seqstream/kafka/<ver>/libs), and a check that `java` is new
enough. Stdlib only."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("stream.broker")

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY_DIR / "pom.xml"
PROPS_TEMPLATE = DEPLOY_DIR / "server.properties"
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.properties"
CACHE_ROOT = Path(os.environ.get("SEQSTREAM_CACHE", Path.home() / ".cache" / "seqstream"))
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+


class BrokerError(RuntimeError):
    """A broker operation failed. str() starts with a one-line reason."""


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
