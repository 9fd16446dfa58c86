"""Running without containers, against the code: the systemd units (deploy/systemd), the
Procfile, .env.example, docker-compose.yml's observability profile and the Kubernetes
kustomization. Every unit and Procfile line must start a service `dfm run` knows, with
variables the settings know, and the processes of one host must never share a metrics port.
`systemd-analyze verify` checks the units as systemd reads them when this machine has it; the
static checks run everywhere."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import shutil
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from contracts.streams import CONSUMERS
from services.cli.main import RUNNERS, SERVICES, app
from services.infra.nats_auth import ADMIN, service_identity
from services.infra.settings import REQUIRED_BY_SERVICE, Settings

ROOT = Path(__file__).parents[2]
UNITS = ROOT / "deploy" / "systemd"
FIELDS = {name.upper() for name in Settings.model_fields}
DFM = "/opt/dfm/venv/bin/dfm"
# what the units set for Python itself, not settings
PYTHON_ENV = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
# services that run on a host but not as a long-running process of the stack: the MCP server
# speaks on stdio (one process per connection, dfm-mcp.socket); the sandbox fakes the vendors
NOT_LONG_RUNNING = {"mcp": "stdio, one process per connection", "sandbox": "fake vendors, staging only"}
LONG_RUNNING = tuple(s for s in SERVICES if s not in NOT_LONG_RUNNING)
# long-running services that serve no /metrics at all (neither METRICS_PORT nor a route of their
# own): nothing scrapes them. test_services_without_metrics_really_serve_none keeps this true,
# so a service that gains /metrics fails until Prometheus and the PodMonitors scrape it.
NO_METRICS = {"console": "the operator console: its pages and /health only, no metrics yet"}
CONSUMER_SERVICES = {spec.durable for spec in CONSUMERS} & set(SERVICES)  # scale to N replicas
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
}


# --- reading unit files ------------------------------------------------------------------------
Unit = dict[str, dict[str, list[str]]]  # section -> key -> every value, in order


def parse_unit(path: Path) -> Unit:
    """systemd's unit syntax as far as these files use it: sections, repeated keys, comments."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: {raw!r} outside a section"
        assert "=" in line, f"{path.name}: {raw!r}"
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, (section, key, values)
    return values[0]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [w for v in unit.get(section, {}).get(key, []) for w in v.split()]


def environment(unit: Unit, instance: str | None = None) -> dict[str, str]:
    """Environment= assignments, with the instance specifier filled in as systemd would."""
    env: dict[str, str] = {}
    for value in unit.get("Service", {}).get("Environment", []):
        for item in value.split():
            name, _, setting = item.partition("=")
            env[name] = setting.replace("%i", instance) if instance is not None else setting
    return env


@pytest.fixture(scope="module")
def units() -> dict[str, Unit]:
    found = {p.name: parse_unit(p) for p in sorted(UNITS.iterdir()) if p.suffix in (".service", ".socket", ".target")}
    assert found
    return found


def run_service(unit: Unit) -> str | None:
    """The service of ``dfm run <service>`` in ExecStart, or None for another command."""
    command = one(unit, "Service", "ExecStart").split()
    assert command[0] == DFM, command
    if command[1:2] == ["run"]:
        assert len(command) == 3, command
        return command[2]
    return None


def services(units: dict[str, Unit]) -> dict[str, str]:
    """unit file name -> the service it runs."""
    return {name: s for name, u in units.items() if name.endswith(".service") and (s := run_service(u))}


# --- systemd -----------------------------------------------------------------------------------
def test_every_unit_runs_a_real_service_and_every_service_has_a_unit(units: dict[str, Unit]) -> None:
    by_unit = services(units)
    assert sorted(by_unit.values()) == sorted(SERVICES)  # one unit per service, none unknown
    for name, service in by_unit.items():
        assert service in RUNNERS, service
        stem = name.removesuffix(".service")
        assert stem in (f"dfm-{service}", f"dfm-{service}@"), name  # the unit is named after it
    command = typer.main.get_command(app)
    assert "run" in command.commands  # type: ignore[attr-defined]
    migrate = one(units["dfm-migrate.service"], "Service", "ExecStart").split()
    assert migrate[:3] == [DFM, "migrate", "upgrade"] and migrate[3:] == ["head"]
    assert "upgrade" in command.commands["migrate"].commands  # type: ignore[attr-defined]
    assert one(units["dfm-migrate.service"], "Service", "Type") == "oneshot"
    assert one(units["dfm-migrate.service"], "Service", "RemainAfterExit") == "yes"


def test_consumers_are_templates_for_replicas_and_the_rest_plain_units(units: dict[str, Unit]) -> None:
    by_unit = services(units)
    expected = {"recorder", "ghl-sync", "aloware-sync", "verity-sync", "jobs"} & set(SERVICES)
    assert expected == CONSUMER_SERVICES
    for name, service in by_unit.items():
        if service in CONSUMER_SERVICES:
            assert name == f"dfm-{service}@.service", name
        elif service == "mcp":  # stdio: one process per connection to the socket
            assert name == "dfm-mcp@.service"
            socket = units["dfm-mcp.socket"]
            assert one(socket, "Socket", "Accept") == "yes"
            assert one(socket, "Socket", "ListenStream").startswith("/run/")
            assert one(units[name], "Service", "StandardInput") == "socket"
            assert one(units[name], "Service", "StandardOutput") == "socket"
            assert one(units[name], "Service", "StandardError") == "journal"  # logs never in the protocol
        else:
            assert name == f"dfm-{service}.service", name


def test_every_service_unit_is_configured_logged_restarted_and_hardened(units: dict[str, Unit]) -> None:
    for name, unit in units.items():
        if not name.endswith(".service"):
            continue
        service = unit["Service"]
        assert service["EnvironmentFile"] == ["/etc/dfm/dfm.env"], name
        assert one(unit, "Service", "User") == "dfm" and one(unit, "Service", "Group") == "dfm", name
        assert one(unit, "Service", "StandardError") == "journal", name
        if name != "dfm-mcp@.service":
            assert one(unit, "Service", "StandardOutput") == "journal", name
        if name in services(units) and services(units)[name] in (*LONG_RUNNING, "sandbox"):
            assert one(unit, "Service", "Restart") == "on-failure", name
            assert "2" in words(unit, "Service", "RestartPreventExitStatus"), name  # dfm's configuration error
        for key, value in HARDENING.items():
            assert value in service.get(key, []), (name, key, service.get(key))
        assert "ReadWritePaths" not in service, name  # nothing is written; add one only with a reason
        assert "~@privileged" in words(unit, "Service", "SystemCallFilter"), name


def test_every_long_running_service_waits_for_the_migrations_and_belongs_to_the_target(units: dict[str, Unit]) -> None:
    by_unit = services(units)
    target = units["dfm.target"]
    wanted = set(words(target, "Unit", "Wants"))
    expected = {"dfm-migrate.service"}
    for name, service in by_unit.items():
        unit = units[name]
        if service not in LONG_RUNNING:
            assert name not in wanted and not any(w.startswith(name.removesuffix(".service")) for w in wanted), name
            assert "dfm.target" not in words(unit, "Install", "WantedBy"), name
            continue
        assert "dfm-migrate.service" in words(unit, "Unit", "Requires"), name
        assert "dfm-migrate.service" in words(unit, "Unit", "After"), name
        assert words(unit, "Unit", "PartOf") == ["dfm.target"], name
        assert words(unit, "Install", "WantedBy") == ["dfm.target"], name
        if name.endswith("@.service"):
            assert one(unit, "Install", "DefaultInstance") == "1", name
            expected.add(name.replace("@.service", "@1.service"))
        else:
            expected.add(name)
    assert wanted == expected
    migrate = units["dfm-migrate.service"]
    assert "Requires" not in migrate["Unit"] and "dfm-migrate.service" not in words(migrate, "Unit", "After")


def test_unit_environment_names_are_settings(units: dict[str, Unit]) -> None:
    for name, unit in units.items():
        for variable in environment(unit, "1"):
            assert variable in FIELDS | PYTHON_ENV, (name, variable)


def test_every_nats_client_unit_gets_only_its_own_seed(units: dict[str, Unit]) -> None:
    admin_api = "df_admin_secret" in REQUIRED_BY_SERVICE["ingress"]  # the ingress always has its admin API
    clients = {name: service_identity(s, admin_api=admin_api) for name, s in services(units).items()}
    clients["dfm-migrate.service"] = ADMIN  # the topology step
    for name, identity in clients.items():
        unit = units[name]
        credentials = dict(c.split(":", 1) for c in unit["Service"].get("LoadCredential", []))
        env = environment(unit)
        if identity is None:  # the sandbox
            assert not credentials and not {k for k in env if k.startswith("NATS_")}, name
            continue
        assert credentials.pop(f"{identity}.nk") == f"/etc/dfm/nats/{identity}.nk", name
        assert env["NATS_CREDENTIALS_DIR"] == "%d", name  # systemd's credentials directory
        [(ca_name, ca_path)] = credentials.items()  # nothing else: no other identity's seed
        assert env["NATS_TLS_CA_FILE"] == f"%d/{ca_name}" and ca_path == "/etc/dfm/nats/ca.pem", name


def serves_metrics_port(service: str) -> bool:
    """Whether ``dfm run <service>`` serves /metrics on METRICS_PORT (the gateway serves its own)."""
    spec = importlib.util.find_spec(RUNNERS[service])  # its source, without importing the service
    assert spec is not None and spec.origin is not None, service
    return "serve_metrics(" in Path(spec.origin).read_text()


def test_no_two_processes_on_one_host_share_a_port(units: dict[str, Unit]) -> None:
    """Every replica's METRICS_PORT is its own, for instances 1-9 of each template (more replicas
    of one consumer than that do not fit one host's connection budget anyway), and none is an
    HTTP port. A tenth instance makes a port the settings refuse: a loud start-up error, never
    a silent collision."""
    fields = Settings.model_fields
    taken: dict[int, str] = {
        fields["ingress_port"].default: "ingress",
        fields["gateway_port"].default: "gateway",
        fields["sandbox_port"].default: "sandbox",
    }
    for name, service in services(units).items():
        unit = units[name]
        if not serves_metrics_port(service):
            continue
        assert "METRICS_PORT" in environment(unit), name  # never the shared default
        if name == "dfm-mcp@.service":
            assert environment(unit)["METRICS_PORT"] == "0"  # one process per connection: none
            continue
        instances = [str(i) for i in range(1, 10)] if name.endswith("@.service") else [None]
        for instance in instances:
            port = Settings.model_validate({"metrics_port": environment(unit, instance)["METRICS_PORT"]}).metrics_port
            where = f"{name} instance {instance}"
            assert port >= 1024 and port not in taken, (where, port, taken.get(port))
            taken[port] = where
        if name.endswith("@.service"):
            with pytest.raises(ValidationError):
                Settings.model_validate({"metrics_port": environment(unit, "10")["METRICS_PORT"]})
    assert {s for s in LONG_RUNNING if serves_metrics_port(s)} >= CONSUMER_SERVICES | {"ingress", "scheduler"}


def fake_root(tmp_path: Path) -> Path:
    """A root directory holding the units and an executable where ExecStart looks."""
    root = tmp_path / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    for path in UNITS.iterdir():
        if path.suffix in (".service", ".socket", ".target"):
            shutil.copy(path, root / "etc" / "systemd" / "system" / path.name)
    binary = root / DFM.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return root


def systemd_analyze_verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", "--recursive-errors=no", *names],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=root / "etc" / "systemd" / "system",
    )


def test_units_pass_systemd_analyze_verify(units: dict[str, Unit], tmp_path: Path) -> None:
    """Static: the sections are systemd's. Then, where systemd-analyze exists, systemd itself
    reads every unit (a template as its instance 1) and must not warn about anything."""
    for name, unit in units.items():
        kind = name.rsplit(".", 1)[1].capitalize()
        assert set(unit) <= {"Unit", kind, "Install"}, (name, set(unit))
    if shutil.which("systemd-analyze") is None:
        warnings.warn("systemd-analyze is not installed: the units were checked statically only", stacklevel=1)
        return
    root = fake_root(tmp_path)
    names = [n.replace("@.", "@1.") for n in units]
    result = systemd_analyze_verify(root, names)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # and it does catch a mistake: a misspelt hardening option
    broken = root / "etc" / "systemd" / "system" / "dfm-ingress.service"
    broken.write_text(broken.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    result = systemd_analyze_verify(root, ["dfm-ingress.service"])
    assert result.returncode != 0 and "ProtectHom" in result.stderr


# --- Procfile ----------------------------------------------------------------------------------
def procfile() -> dict[str, str]:
    lines = {}
    for raw in (ROOT / "Procfile").read_text().splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", raw)
        assert match, raw  # the format honcho and overmind read
        lines[match.group(1)] = match.group(2)
    return lines


def test_every_procfile_line_runs_a_real_service_with_real_settings() -> None:
    lines = procfile()
    assert sorted(lines) == sorted(LONG_RUNNING)  # migrations first, by hand: a runner stops all when one exits
    for name, command in lines.items():
        parts = command.split()
        assignments = [p.split("=", 1)[0] for p in parts if re.match(r"[A-Z_]+=", p)]
        assert set(assignments) <= FIELDS, (name, assignments)
        assert parts[-3:] == ["dfm", "run", name] and name in SERVICES and "exec" in parts, (name, command)


def test_procfile_processes_get_distinct_metrics_ports_and_the_gateway_keeps_its_port(tmp_path: Path) -> None:
    """Each line runs under sh as honcho and overmind run it, with PORT set the way they set it
    (their own per process) and a stand-in `dfm` that prints what it got."""
    (tmp_path / "dfm").write_text('#!/bin/sh\necho "$METRICS_PORT|$GATEWAY_PORT|$*"\n')
    (tmp_path / "dfm").chmod(0o755)
    seen: dict[str, tuple[str, str]] = {}
    for number, (name, command) in enumerate(procfile().items()):
        port = str(5000 + 100 * number)
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PORT": port}
        result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=10, check=True)
        metrics, gateway, args = result.stdout.strip().split("|")
        assert args == f"run {name}", (name, result.stdout)
        seen[name] = (metrics, gateway)
        if serves_metrics_port(name):
            assert metrics == port, (name, metrics)  # the runner's port: distinct per process and replica
    # the settings read PORT as GATEWAY_PORT when GATEWAY_PORT is unset (validation_alias)
    assert "port" in str(Settings.model_fields["gateway_port"].validation_alias)
    assert seen["gateway"][1] == str(Settings.model_fields["gateway_port"].default)


# --- .env.example --------------------------------------------------------------------------------
ENV_LINE = re.compile(r"^(# )?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example_lines() -> list[tuple[bool, str, str]]:
    """(commented, name, value) of every assignment in the committed .env.example."""
    found = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            found.append((bool(match.group(1)), match.group(2), match.group(3)))
    return found


def test_env_example_is_what_the_generator_makes_from_the_settings_now() -> None:
    from services.tooling.env_example import render_env_example

    assert (ROOT / ".env.example").read_text() == render_env_example(), (
        "regenerate it: python -m services.tooling.env_example > .env.example"
    )


def test_env_example_names_every_setting_once_and_what_compose_interpolates() -> None:
    from services.tooling.env_example import EXTRA_VARIABLES

    names = [name for _, name, _ in env_example_lines()]
    extras = {name for name, _, _ in EXTRA_VARIABLES}
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(names) == FIELDS | extras
    assert not extras & FIELDS
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert interpolated <= FIELDS | extras, interpolated - FIELDS - extras


def clean_settings(monkeypatch: pytest.MonkeyPatch, env_file: Path | None = None) -> dict[str, Any]:
    for name in (*FIELDS, "PORT"):
        monkeypatch.delenv(name, raising=False)
    values = Settings(_env_file=env_file).model_dump()
    # PEM keys: the file carries them with \n escapes, which settings.pem_public_keys reads
    return {k: v.replace("\\n", "\n") if isinstance(v, str) else v for k, v in values.items()}


def test_env_example_leaves_secrets_empty_and_its_defaults_are_the_settings_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As it is, the file changes nothing; with every commented default uncommented it still
    changes nothing, so each line shows the real default in a form the settings read back."""
    secrets = {name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
    assert {"GHL_API_KEY", "DF_ADMIN_SECRET", "DFM_TOKEN_KEY", "NATS_PASSWORD"} <= secrets
    for line in (ROOT / ".env.example").read_text().splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Z][A-Z0-9_]*=", line), line
    lines = env_example_lines()
    for commented, name, value in lines:
        if name in secrets:
            assert (commented, value) == (False, ""), name
        if not commented:
            assert value == "", name  # only the empty ones to fill in are live
    defaults = clean_settings(monkeypatch)
    as_is = tmp_path / "as-is.env"
    as_is.write_text((ROOT / ".env.example").read_text())
    assert clean_settings(monkeypatch, as_is) == defaults
    uncommented = tmp_path / "uncommented.env"
    uncommented.write_text("\n".join(f"{name}={value}" for _, name, value in lines) + "\n")
    assert set(dotenv_values(uncommented)) == {name for _, name, _ in lines}  # no line unreadable
    assert clean_settings(monkeypatch, uncommented) == defaults


def test_env_example_does_not_set_what_the_units_set(units: dict[str, Unit]) -> None:
    """systemd lets EnvironmentFile= values win over a unit's Environment=, so /etc/dfm/dfm.env
    copied from the example must leave those variables alone (even empty would unset them)."""
    live = {name for commented, name, _ in env_example_lines() if not commented}
    for name, unit in units.items():
        assert not set(environment(unit)) & live, (name, set(environment(unit)) & live)


# --- docker-compose.yml: the observability profile ---------------------------------------------
OBSERVABILITY = {"prometheus", "grafana", "otel-collector", "jaeger"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of each bind mount from this repository."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def dfm_services(compose: dict[str, Any]) -> dict[str, str]:
    """compose service -> the `dfm run` service it runs."""
    return {name: s["command"][1] for name, s in compose["services"].items() if s.get("command", [])[:1] == ["run"]}


def test_observability_services_exist_only_in_their_profile_with_pinned_images(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in OBSERVABILITY:
            assert service["profiles"] == ["observability"], name
            image = service["image"]
            assert re.fullmatch(r"[a-z0-9./-]+:v?\d+\.\d+\.\d+", image), image  # a release, never latest
            for target, source in mounts(service).items():
                assert source.exists(), (name, target, source)
        else:
            assert "profiles" not in service, name  # the stack itself runs with or without the profile
    assert set(compose["services"]) >= OBSERVABILITY
    assert {"prometheus-data", "grafana-data"} <= set(compose["volumes"])


def test_prometheus_scrapes_every_metrics_port_of_the_compose_stack(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    files = mounts(prometheus)
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    config = yaml.safe_load(files[config_path].read_text())
    [rules] = config["rule_files"]
    assert files[rules] == ROOT / "deploy" / "prometheus" / "alerts.yml"
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"  # every replica of a scaled service
            for host in sd["names"]:
                scraped[host] = sd["port"]
    expected = {}
    fields = Settings.model_fields
    for name, service in dfm_services(compose).items():
        env = compose["services"][name].get("environment", {})
        if serves_metrics_port(service):
            expected[name] = int(env.get("METRICS_PORT", fields["metrics_port"].default))
        elif service == "gateway":  # /metrics on its own port
            from services.gateway.app import create_app

            paths = {getattr(r, "path", "") for r in create_app(Settings()).routes}
            assert "/metrics" in paths
            expected[name] = int(env.get("GATEWAY_PORT", fields["gateway_port"].default))
    assert set(dfm_services(compose).values()) >= set(LONG_RUNNING)  # every service runs in compose
    assert set(expected) == set(LONG_RUNNING) - set(NO_METRICS)  # and each one with /metrics is scraped
    assert scraped == expected


def test_grafana_provisioning_points_at_real_files_and_services(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    files = mounts(grafana)
    provisioning = files["/etc/grafana/provisioning"]
    [datasources] = (provisioning / "datasources").glob("*.yml")
    sources = {d["type"]: d for d in yaml.safe_load(datasources.read_text())["datasources"]}
    assert sources["prometheus"]["url"] == "http://prometheus:9090" and sources["prometheus"]["isDefault"]
    assert any(p.endswith(":9090") for p in compose["services"]["prometheus"]["ports"])
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    assert any(p.endswith(":16686") for p in compose["services"]["jaeger"]["ports"])
    [dashboards] = (provisioning / "dashboards").glob("*.yml")
    [provider] = yaml.safe_load(dashboards.read_text())["providers"]
    folder = provider["options"]["path"]
    mounted = {target: source for target, source in files.items() if target.startswith(folder + "/")}
    assert list(mounted.values()) == [ROOT / "deploy" / "grafana" / "dfm-overview.json"]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dfm-overview.json").read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"  # resolves to the provisioned default
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in mounted


def test_traces_go_from_the_services_through_the_collector_to_jaeger(compose: dict[str, Any]) -> None:
    from services.infra import tracing
    from services.tooling.env_example import EXTRA_VARIABLES

    assert "otlp" in tracing.EXPORTERS and "exporter.otlp.proto.http" in inspect.getsource(tracing)  # OTLP/HTTP
    collector = compose["services"]["otel-collector"]
    config_path = next(a.split("=", 1)[1] for a in collector["command"] if a.startswith("--config="))
    config = yaml.safe_load(mounts(collector)[config_path].read_text())
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http == "0.0.0.0:4318"  # reachable from the other containers
    [endpoint_doc] = [d for n, d, _ in EXTRA_VARIABLES if n == "OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert "http://otel-collector:4318" in endpoint_doc
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    [exporter] = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


# --- Kubernetes: kustomization, images, secrets, PodMonitors -----------------------------------
K8S = ROOT / "deploy" / "k8s"
# the Secret's keys only (empty values), for the tests and readers: not a resource of the
# kustomization, whose secretGenerator makes dfm-secrets from a file that is never committed
SECRET_EXAMPLE = "secret.example.yaml"


def k8s_docs(directory: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(directory.glob("*.yaml"))}


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yml").read_text())
    return loaded


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployment or Job name -> its pod template."""
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")}


def test_kustomization_lists_every_core_manifest_and_sets_the_image(kustomization: dict[str, Any]) -> None:
    files = k8s_docs(K8S)
    assert sorted(kustomization["resources"]) == sorted(set(files) - {SECRET_EXAMPLE})
    assert kustomization["namespace"] == "dfm"
    [image] = kustomization["images"]
    assert image["newName"] and image["newTag"]
    docs = [d for name in kustomization["resources"] for d in files[name]]
    templates = pods(docs)
    assert set(templates) >= set(LONG_RUNNING) | {"dfm-migrate"}
    for name, template in templates.items():
        for container in template["spec"]["containers"]:
            assert container["image"] == image["name"], name  # no tag or registry here: the kustomization sets it
    assert ":" not in image["name"] and "/" not in image["name"]


def test_keda_owns_the_replica_count_of_what_it_scales() -> None:
    """A `replicas:` on a Deployment that KEDA scales resets it on every `kubectl apply`."""
    docs = [d for ds in k8s_docs(K8S).values() for d in ds]
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    assert scaled == CONSUMER_SERVICES
    for doc in docs:
        if doc["kind"] == "Deployment":
            assert ("replicas" in doc["spec"]) != (doc["metadata"]["name"] in scaled), doc["metadata"]["name"]


def test_no_secret_value_is_committed_and_the_secret_comes_from_an_ignored_file(kustomization: dict[str, Any]) -> None:
    files = k8s_docs(K8S)
    for name in kustomization["resources"]:
        assert not [d for d in files[name] if d["kind"] == "Secret"], name  # generated, never a resource
    [generator] = kustomization["secretGenerator"]
    assert generator["name"] == "dfm-secrets"
    [env_file] = generator["envs"]
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", f"deploy/k8s/{env_file}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tracked.returncode != 0, f"{env_file} is committed"
    ignored = subprocess.run(["git", "check-ignore", "-q", f"deploy/k8s/{env_file}"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f"{env_file} is not git-ignored"
    example = dotenv_values(K8S / f"{env_file}.example")
    [secret] = files[SECRET_EXAMPLE]
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "dfm-secrets"
    assert set(example) == set(secret["stringData"]) and set(example) <= FIELDS
    assert set(example.values()) == {""} and set(secret["stringData"].values()) == {""}  # keys only
    for value in (v for ds in files.values() for d in ds if d["kind"] == "Secret" for v in d.get("data", {}).values()):
        raise AssertionError(f"a Secret with data in git: {value[:4]}...")


def test_kustomize_renders_the_image_and_the_generated_secret_everywhere(
    kustomization: dict[str, Any], tmp_path: Path
) -> None:
    """Where kubectl (or kustomize) exists: render a copy with a filled-in secrets file, as the
    deploy job does, and check what would be applied."""
    tool = shutil.which("kubectl") or shutil.which("kustomize")
    if tool is None:
        warnings.warn(
            "neither kubectl nor kustomize is installed: the kustomization was checked statically only", stacklevel=1
        )
        return
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    [generator] = kustomization["secretGenerator"]
    [env_file] = generator["envs"]
    example = (copy / f"{env_file}.example").read_text()
    (copy / env_file).write_text(re.sub(r"^([A-Z_]+)=$", r"\1=value-of-\1", example, flags=re.MULTILINE))
    command = [tool, "kustomize", str(copy)] if tool.endswith("kubectl") else [tool, "build", str(copy)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("dfm-secrets-")  # a new name per change: pods roll
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "config"
    [image] = kustomization["images"]
    for name, template in pods(docs).items():
        [container] = template["spec"]["containers"]
        assert container["image"] == f"{image['newName']}:{image['newTag']}", name
        refs = {r["secretRef"]["name"] for r in container["envFrom"] if "secretRef" in r}
        assert refs == {secret["metadata"]["name"]}, name
    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["metadata"]["labels"]["app.kubernetes.io/component"] == "config"  # the deploy job's first step


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, values = labels.get(expression["key"]), expression.get("values", [])
        if (expression["operator"] == "In" and value not in values) or (
            expression["operator"] == "NotIn" and value in values
        ):
            return False
    return True


def test_pod_monitors_scrape_every_pods_metrics_port() -> None:
    """PodMonitors (prometheus-operator) in their own directory, so the core manifests apply
    and validate without that CRD."""
    core = [d for ds in k8s_docs(K8S).values() for d in ds]
    monitors = [d for ds in k8s_docs(K8S / "monitoring").values() for d in ds if d["kind"] == "PodMonitor"]
    assert monitors and not [d for d in core if d["apiVersion"].startswith("monitoring.coreos.com/")]
    [config] = [d for d in core if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "dfm-config"]
    metrics_port = int(config["data"]["METRICS_PORT"])
    for name, template in pods([d for d in core if d["kind"] == "Deployment"]).items():
        labels = template["metadata"]["labels"]
        [container] = template["spec"]["containers"]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        expected = "metrics" if serves_metrics_port(name) else "http"
        if expected == "metrics":
            assert ports.get("metrics") == metrics_port, name
        elif name in NO_METRICS:  # nothing to scrape: no PodMonitor may select it
            expected = ""
            assert "metrics" not in ports, name
        else:  # the gateway: /metrics on its HTTP port
            assert name == "gateway" and ports["http"] == Settings.model_fields["gateway_port"].default
        scraping = [
            (m, e) for m in monitors if matches(m["spec"]["selector"], labels) for e in m["spec"]["podMetricsEndpoints"]
        ]
        found = [(e["port"], e.get("path", "/metrics")) for _, e in scraping]
        assert found == ([(expected, "/metrics")] if expected else []), name
        for monitor, _ in scraping:
            assert monitor["metadata"]["namespace"] == "dfm", name


def test_the_deploy_job_sets_the_image_with_kustomize_and_migrates_first(kustomization: dict[str, Any]) -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = {s.get("name", ""): s for s in workflow["jobs"]["deploy"]["steps"]}
    text = " ".join(str(s.get("run", "")) for s in steps.values())
    assert "sed " not in text  # the images come from the kustomization
    [image] = kustomization["images"]
    assert f"kustomize edit set image {image['name']}=" in text
    [generator] = kustomization["secretGenerator"]
    assert f"deploy/k8s/{generator['envs'][0]}" in text  # written from the environment's secret
    migrate = steps["migrations first"]["run"]
    assert "kubectl apply -k deploy/k8s -l 'app.kubernetes.io/component in (config,migrate)'" in migrate
    assert "kubectl apply -k deploy/k8s" in steps["rolling update of every service"]["run"]


# --- deploy/README.md ----------------------------------------------------------------------------
def test_the_vm_install_instructions_name_real_files_and_the_units_ports(units: dict[str, Unit]) -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    section = text[text.index("## Install on a VM with systemd") : text.index("## Observability")]
    for path in re.findall(r"(?<![\w/])((?:deploy|requirements)/[\w./*-]+|\.env\.example)", section):
        assert list(ROOT.glob(path.rstrip("."))), path
    for name, prefix in re.findall(r"`(dfm-[\w-]+)@N` (\d+)N", section):
        assert environment(units[f"{name}@.service"])["METRICS_PORT"] == f"{prefix}%i", name
    for service in ("ingress", "scheduler"):
        port = environment(units[f"dfm-{service}.service"])["METRICS_PORT"]
        assert f"{service} {port}" in section, service
    templated = {n.removesuffix("@.service") for n, s in services(units).items() if s in CONSUMER_SERVICES}
    assert templated == set(re.findall(r"`(dfm-[\w-]+)@N`", section))


# --- the operator console on a host ------------------------------------------------------------
def test_services_without_metrics_really_serve_none() -> None:
    """NO_METRICS holds: the runner serves no METRICS_PORT and the app has no /metrics route, so
    no scrape config or PodMonitor is missing one; when the console gains /metrics this fails."""
    from fastapi.testclient import TestClient

    from services.console.app import create_console_app

    apps = {"console": create_console_app}  # every NO_METRICS entry with its app
    assert set(apps) == set(NO_METRICS) and set(NO_METRICS) <= set(LONG_RUNNING)
    probe = Settings(
        database_url="postgresql://probe@127.0.0.1:1/probe", nats_url="nats://127.0.0.1:1", node_env="development"
    )
    for service, factory in apps.items():
        assert not serves_metrics_port(service), service
        app = factory(probe)
        assert "/health" in {getattr(r, "path", "") for r in app.routes}, service  # the table is the app's
        client = TestClient(app)  # outside `with`: no lifespan, nothing connects
        assert client.get("/static/console.css").status_code == 200, service
        assert client.get("/metrics").status_code == 404, service


def test_the_console_binds_loopback_on_a_host_and_its_port_is_its_own(
    units: dict[str, Unit], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a VM the operator reaches the console through an SSH tunnel or a TLS proxy on the host
    (deploy/README.md): the unit, the Procfile line and .env.example leave CONSOLE_HOST at its
    loopback default, which production accepts (an open host it refuses), and its port is no
    other listener's on the host."""
    from services.infra.settings import ConfigError

    for name in FIELDS:
        monkeypatch.delenv(name, raising=False)
    console = {"CONSOLE_HOST", "CONSOLE_TLS_PROXY"}
    assert not console & set(environment(units["dfm-console.service"]))
    assert not {w.split("=", 1)[0] for w in procfile()["console"].split()} & console
    assert not console & {name for commented, name, _ in env_example_lines() if not commented}
    fields = Settings.model_fields
    assert fields["console_host"].default == "127.0.0.1"
    secret = "s" * 32
    Settings(node_env="production", console_session_secret=secret).refuse_insecure_console()  # starts
    with pytest.raises(ConfigError, match="CONSOLE_HOST"):
        Settings(node_env="production", console_session_secret=secret, console_host="0.0.0.0").refuse_insecure_console()
    taken = {fields[f"{s}_port"].default for s in ("ingress", "gateway", "sandbox")}
    for name, unit in units.items():
        value = environment(unit).get("METRICS_PORT")
        instances = [str(i) for i in range(1, 10)] if name.endswith("@.service") else [None]
        if value is not None:
            taken |= {
                Settings.model_validate({"metrics_port": environment(unit, i)["METRICS_PORT"]}).metrics_port
                for i in instances
            }
    assert fields["console_port"].default not in taken
    text = (ROOT / "deploy" / "README.md").read_text()
    section = text[text.index("## Install on a VM with systemd") : text.index("## Observability")]
    assert "ssh -L 3004:127.0.0.1:3004" in section and "dfm-console" in section
