"""deploy/compose.yml and the files it mounts: valid against the compose-spec schema (the
copy check-jsonschema bundles; nothing is downloaded), and consistent with the gateway: its
settings, routes, ports and providers file, with the HAProxy backends, the Prometheus
targets and the Grafana provisioning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from importlib import resources
from urllib.parse import urlsplit

import jsonschema
import pytest

from spendgate.cli import build_parser, cmd_migrate
from spendgate.config import Settings
from tests.deploy.files import (
    COMPOSE,
    DEPLOY,
    ENV_EXAMPLE,
    IMAGE,
    ROOT,
    SETTINGS_ENV,
    get_routes,
    load_providers,
    load_yaml,
)
from tests.test_deploy_files import PROMETHEUS, as_dict, as_list, as_str, dashboard, variables

HAPROXY = DEPLOY / "haproxy" / "haproxy.cfg"
GRAFANA = DEPLOY / "grafana"
REQUIRED_SECRETS = {
    "SPENDGATE_ADMIN_TOKEN",
    "SPENDGATE_SECRET_KEY",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
}
# What a filled-in deploy/.env could hold.
SAMPLE_SECRETS = {name: f"sample-{name.lower()}-0123456789" for name in REQUIRED_SECRETS}


# --- Compose's variable interpolation --------------------------------------------------------

VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}` and
    `${NAME?error}`, as `docker compose` reads them."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        op, arg = match.group(3), match.group(4)
        value = env.get(name)
        missing = not value if op and op.startswith(":") else value is None
        if op in ("-", ":-"):
            return arg if missing else str(value)
        if op in ("?", ":?") and missing:
            raise MissingVariable(name)
        return value or ""

    return VARIABLE.sub(one, text)


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): value.strip() for name, value in pairs}


def test_interpolate_reads_compose_syntax() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("$A ${A} ${B:-x} ${E:-y} ${E-z} $$A", env) == "1 1 x y  $A"
    with pytest.raises(MissingVariable, match="E"):
        interpolate("${E:?set E}", env)
    assert interpolate("${E?set E}", env) == ""


# --- the compose file -----------------------------------------------------------------------


def compose() -> dict[str, object]:
    return load_yaml(COMPOSE)


def services() -> dict[str, dict[str, object]]:
    found = as_dict(compose()["services"], "services")
    return {name: as_dict(value, name) for name, value in found.items()}


def environment(name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment; interpolated with `env` when given."""
    raw = as_dict(services()[name].get("environment", {}), f"{name}.environment")
    values = {key: str(value) for key, value in raw.items()}
    return values if env is None else {k: interpolate(v, env) for k, v in values.items()}


def replicas() -> list[str]:
    """The gateway replicas: the spendgate image with its default command (serve)."""
    return [
        name
        for name, service in services().items()
        if service.get("image") == IMAGE and "command" not in service
    ]


def mounts(name: str) -> dict[str, str]:
    """A service's volumes: container path -> source (a named volume or a host path)."""
    found: dict[str, str] = {}
    for entry in as_list(services()[name].get("volumes", []), f"{name}.volumes"):
        source, target = as_str(entry, f"{name}.volumes").split(":")[:2]
        found[target] = source
    return found


def depends(name: str) -> dict[str, str]:
    value = services()[name].get("depends_on", {})
    if isinstance(value, list):
        return {as_str(other, name): "service_started" for other in value}
    return {k: str(as_dict(v, k)["condition"]) for k, v in as_dict(value, name).items()}


def test_compose_file_matches_the_compose_spec() -> None:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    # The schema does catch a misspelled field.
    broken = compose() | {"services": services() | {"redis": services()["redis"] | {"ports_": 1}}}
    assert not validator.is_valid(broken)


def test_compose_refuses_to_start_without_each_secret() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    required = {m.group(2) for m in VARIABLE.finditer(text) if m.group(3) in (":?", "?")}
    assert required == REQUIRED_SECRETS
    example = env_example()
    for name in REQUIRED_SECRETS:
        assert example[name] == "", f"{name} must be left empty in .env.example"
        with pytest.raises(MissingVariable, match=name):
            interpolate(text, example | SAMPLE_SECRETS | {name: ""})
    interpolate(text, example | SAMPLE_SECRETS)
    # Every variable the file reads is listed in .env.example.
    used = {m.group(2) or m.group(5) for m in VARIABLE.finditer(text) if not m.group(1)}
    assert used <= set(example)
    assert "deploy/.env" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|DATABASE_URL")


def test_no_secret_is_written_in_the_file() -> None:
    checked = 0
    for name in services():
        for key, value in environment(name).items():
            if SECRET_NAME.search(key):
                assert "${" in value, f"{name}.{key} must come from deploy/.env"
                checked += 1
    assert checked >= 4 * len(replicas())


def test_several_replicas_run_the_image_with_valid_settings() -> None:
    names = replicas()
    assert len(names) >= 3
    postgres = environment("postgres", SAMPLE_SECRETS)
    for name in names:
        env = environment(name, SAMPLE_SECRETS)
        assert {k for k in env if k.startswith("SPENDGATE_")} <= SETTINGS_ENV, name
        settings = Settings.from_env(env)
        assert settings.admin_token == SAMPLE_SECRETS["SPENDGATE_ADMIN_TOKEN"]
        assert settings.secret_key == SAMPLE_SECRETS["SPENDGATE_SECRET_KEY"]
        # os.cpu_count() in a container counts the host's cores: the count is explicit.
        assert settings.workers >= 1 and settings.metrics_port is not None
        assert settings.redis_url is not None and settings.database_url is not None
        assert urlsplit(settings.redis_url).hostname == "redis"
        database = urlsplit(settings.database_url)
        assert database.hostname == "postgres" and database.port == 5432
        assert database.username == postgres["POSTGRES_USER"]
        assert database.password == postgres["POSTGRES_PASSWORD"]
        assert database.path == "/" + postgres["POSTGRES_DB"]
        assert "ports" not in services()[name]  # reached through the load balancer only


def test_replicas_start_after_the_migration_on_healthy_servers() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] == ["migrate"] and migrate["image"] == IMAGE
    assert build_parser().parse_args(["migrate"]).func is cmd_migrate
    assert set(environment("migrate")) == {"SPENDGATE_DATABASE_URL"}
    assert depends("migrate") == {"postgres": "service_healthy"}
    for name in replicas():
        assert depends(name) == {
            "migrate": "service_completed_successfully",
            "redis": "service_healthy",
            "postgres": "service_healthy",
        }
    for server in ("redis", "postgres"):
        assert "healthcheck" in services()[server]


def test_redis_and_postgres_keep_their_data() -> None:
    command = [
        as_str(part, "redis.command") for part in as_list(services()["redis"]["command"], "")
    ]
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    named = set(as_dict(compose()["volumes"], "volumes"))
    assert mounts("redis")["/data"] in named
    assert mounts("postgres")["/var/lib/postgresql/data"] in named


def test_the_gateway_containers_are_locked_down() -> None:
    for name in [*replicas(), "migrate"]:
        service = services()[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in as_list(service["security_opt"], name)
        assert "/tmp" in as_list(service["tmpfs"], name)


def test_images_are_pinned_and_the_gateway_is_built_from_this_repository() -> None:
    for name, service in services().items():
        image = as_str(service["image"], name)
        _, _, tag = image.rpartition(":")
        assert tag and "/" not in tag and tag != "latest", f"{name}: {image}"
        if image == IMAGE:
            build = as_dict(service["build"], name)
            context = (DEPLOY / as_str(build["context"], name)).resolve()
            assert context == ROOT
            assert (context / as_str(build["dockerfile"], name)).is_file()


def test_every_file_mounted_from_the_repository_exists() -> None:
    found = 0
    for name in services():
        for source in mounts(name).values():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
                found += 1
    assert found >= 5


def test_the_providers_file_is_mounted_and_its_credentials_passed_on() -> None:
    for name in replicas():
        env = environment(name)
        source = mounts(name)[env["SPENDGATE_PROVIDERS_FILE"]]
        providers, reads = load_providers(DEPLOY / source)
        assert providers
        assert reads and reads <= set(env), name


# --- the load balancer ------------------------------------------------------------------------


def haproxy_section(header: str) -> list[list[str]]:
    """The directives of one section of haproxy.cfg (e.g. "backend spendgate")."""
    lines: list[list[str]] = []
    inside = False
    for raw in HAPROXY.read_text(encoding="utf-8").splitlines():
        text = raw.split("#", 1)[0].rstrip()
        if not text:
            continue
        if not raw[0].isspace():
            inside = text == header
        elif inside:
            lines.append(text.split())
    assert lines, f"no section {header!r}"
    return lines


def test_the_load_balancer_sends_to_every_ready_replica() -> None:
    backend = haproxy_section("backend spendgate")
    servers = {line[1]: line[2] for line in backend if line[0] == "server"}
    port = Settings().port  # the replicas do not change it
    assert servers == {name: f"{name}:{port}" for name in replicas()}
    assert ["option", "httpchk", "GET", "/readyz"] in backend
    assert "/readyz" in get_routes()
    frontend = haproxy_section("frontend spendgate")
    bind = next(line for line in frontend if line[0] == "bind")
    published = [as_str(p, "lb.ports") for p in as_list(services()["lb"]["ports"], "lb.ports")]
    assert [p.rsplit(":", 1)[1] for p in published] == [bind[1].rsplit(":", 1)[1]]
    assert mounts("lb")["/usr/local/etc/haproxy/haproxy.cfg"] == "./haproxy/haproxy.cfg"
    # Streams are not cut by the balancer before the gateway's own upstream timeout.
    defaults = haproxy_section("defaults")
    for which in ("client", "server"):
        timeout = next(line for line in defaults if line[:2] == ["timeout", which])
        assert int(timeout[2].removesuffix("s")) >= Settings().upstream_timeout


def test_haproxy_accepts_the_config() -> None:
    tool = shutil.which("haproxy")
    if tool is None:
        pytest.skip("haproxy is not on PATH")
    done = subprocess.run(
        [tool, "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- Prometheus and Grafana ------------------------------------------------------------------


def test_prometheus_scrapes_every_replica_on_its_metrics_port() -> None:
    config = load_yaml(PROMETHEUS)
    job = next(
        as_dict(j, "job")
        for j in as_list(config["scrape_configs"], "scrape_configs")
        if as_dict(j, "job")["job_name"] == "spendgate"
    )
    targets = {
        as_str(target, "target")
        for static in as_list(job["static_configs"], "static_configs")
        for target in as_list(as_dict(static, "static")["targets"], "targets")
    }
    expected = set()
    for name in replicas():
        port = Settings.from_env(environment(name, SAMPLE_SECRETS)).metrics_port
        expected.add(f"{name}:{port}")
    assert targets == expected
    command = [as_str(c, "command") for c in as_list(services()["prometheus"]["command"], "")]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert mounts("prometheus")["/etc/prometheus"] == "./prometheus"


def test_grafana_provisions_prometheus_and_the_dashboard() -> None:
    provisioning = mounts("grafana")
    assert provisioning["/etc/grafana/provisioning"] == "./grafana/provisioning"
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = (as_dict(s, "datasource") for s in as_list(sources["datasources"], ""))
    assert source["type"] == "prometheus" and source["isDefault"] is True
    url = urlsplit(as_str(source["url"], "url"))
    assert url.hostname == "prometheus" and url.hostname in services()
    assert url.port == 9090  # Prometheus's listen port in its container
    published = [as_str(p, "ports") for p in as_list(services()["prometheus"]["ports"], "")]
    assert [p.rsplit(":", 1)[1] for p in published] == ["9090"]
    # The dashboard's data source variable picks the default Prometheus data source.
    variable = next(v for v in variables(dashboard()) if v["name"] == "DS_PROMETHEUS")
    assert variable["query"] == source["type"]

    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "spendgate.yml")
    (provider,) = (as_dict(p, "provider") for p in as_list(providers["providers"], ""))
    folder = as_str(as_dict(provider["options"], "options")["path"], "path")
    dashboards = {
        target: source for target, source in provisioning.items() if target.startswith(folder)
    }
    assert dashboards == {f"{folder}/spendgate.json": "./grafana/spendgate.json"}
