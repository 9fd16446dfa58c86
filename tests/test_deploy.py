"""Deployment files against the code: docker-compose.yml, deploy/k8s, deploy/Dockerfile and the
NATS configs. Docker and a cluster are not available here, so every file is parsed and checked
for what would break a deployment: a wrong command, port, probe path, a missing or misspelt
variable, a consumer without its scaler."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from contracts.streams import CONSUMERS, JOBS_CONSUMER, RECORDER
from services.cli import SERVICES
from services.common.embedded import nats_server_binary
from services.common.settings import REQUIRED_BY_SERVICE, Settings
from services.gateway.app import create_app as gateway_app
from services.ingress.app import create_app as ingress_app

ROOT = Path(__file__).parents[1]
LONG_RUNNING = ("ingress", "recorder", "ghl-sync", "aloware-sync", "verity-sync", "jobs", "scheduler", "gateway")
HTTP = {"ingress": 3002, "gateway": 3001}
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
        assert services[name]["ports"] == [f"{port}:{port}"]
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
        assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == \
            {"dfm-config", "dfm-secrets"}
        if name in HTTP:
            assert container["ports"][0]["containerPort"] == HTTP[name]
            for probe in ("livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                assert get["port"] == HTTP[name] and get["path"] in routes(name), (name, probe)
        grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > (JOBS_CONSUMER.ack_wait_s if name == "jobs" else 20)  # longer than the drain
    for name in LONG_RUNNING:
        assert name in of_kind(manifests, "PodDisruptionBudget"), name
    assert of_kind(manifests, "Service").keys() == HTTP.keys()


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
    expected = {spec.durable: spec.stream for spec in CONSUMERS}
    assert set(scaled) == set(expected)
    for name, doc in scaled.items():
        assert doc["spec"]["scaleTargetRef"]["name"] in deployments
        [trigger] = doc["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        assert (meta["stream"], meta["consumer"]) == (expected[name], name)
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
def test_nats_configs_are_valid_for_nats_server(name: str) -> None:
    path = ROOT / "deploy" / "nats" / name
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True,
                            timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "http_port: 8222" in text  # KEDA reads consumer lag from the monitoring port
    if name.startswith("cluster"):
        assert "sync_interval: always" in text and text.count("nats-route://") == 3


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
