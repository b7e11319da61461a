"""The deploy files as the deploy tests read them: the Dockerfile through the BuildKit
parser (the `dockerfile` package), YAML through PyYAML (anchors and merge keys resolved, as
Compose and kubectl resolve them), and what the project itself says about them: the
settings' variable names, the version, the routes, the providers-file loader."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import dockerfile  # type: ignore[import-not-found]
import yaml

from spendgate.config import Settings
from spendgate.config.catalog_types import Provider
from spendgate.config.providers_file import read_providers_file
from spendgate.proxy.app import create_app
from tests.test_deploy_files import as_dict

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
KUBERNETES = DEPLOY / "kubernetes"

# Every environment variable a setting is read from.
SETTINGS_ENV = frozenset(str(f.metadata["env"]) for f in dataclasses.fields(Settings))


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        version = tomllib.load(fh)["project"]["version"]
    assert isinstance(version, str)
    return version


IMAGE = f"spendgate:{project_version()}"


def load_yaml(path: Path) -> dict[str, object]:
    return as_dict(yaml.safe_load(path.read_text(encoding="utf-8")), path.name)


def yaml_documents(path: Path) -> list[dict[str, object]]:
    text = path.read_text(encoding="utf-8")
    return [as_dict(doc, path.name) for doc in yaml.safe_load_all(text) if doc is not None]


@dataclasses.dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: FROM, COPY, ...
    flags: tuple[str, ...]
    value: tuple[str, ...]
    json: bool  # exec form (["a", "b"])


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, one list per stage (the ARGs before the first FROM
    form stage 0 together with that FROM)."""
    stages: list[list[Instruction]] = [[]]
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        instruction = Instruction(
            command.cmd.upper(), tuple(command.flags), tuple(command.value), command.json
        )
        if instruction.cmd == "FROM" and any(i.cmd == "FROM" for i in stages[-1]):
            stages.append([])
        stages[-1].append(instruction)
    return stages


def stage_env(stage: list[Instruction]) -> dict[str, str]:
    """The ENV values a stage sets (`ENV a=1 b=2` parses to (a, 1, b, 2))."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.cmd == "ENV":
            pairs = instruction.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


class RecordingEnv(Mapping[str, str]):
    """An environment that answers every variable (with `probe-<NAME>`) and remembers
    which ones were read: the providers-file loader tells us what the file needs."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return f"probe-{key}"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def load_providers(path: Path) -> tuple[list[Provider], frozenset[str]]:
    """The providers of a providers file, parsed by spendgate's own loader (a bad field or
    an unpriced model raises ConfigError), and the environment variables it reads."""
    environ = RecordingEnv()
    loaded = read_providers_file(path, environ, datetime.now(UTC))
    return [provider for provider, _ in loaded], frozenset(environ.read)


def get_routes() -> frozenset[str]:
    """The paths the gateway answers GET on (the app is built, not started)."""
    settings = Settings(
        database_url="postgresql://unused", redis_url="redis://unused", admin_token="x" * 16
    )
    app = create_app(settings)
    return frozenset(
        resource.canonical
        for resource in app.router.resources()
        if any(route.method == "GET" for route in resource)
    )
