"""The Dockerfile, checked where no Docker engine runs: parsed by BuildKit's own parser,
linted by hadolint when installed, its build context worked out from .dockerignore, and
its HEALTHCHECK command run against a real gateway. docs/SCALING.md ("The image") says how
the build itself was checked."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from spendgate.cli import build_parser, cmd_serve
from spendgate.config import Settings
from tests.deploy.files import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    SETTINGS_ENV,
    Instruction,
    dockerfile_stages,
    get_routes,
    stage_env,
)
from tests.faults.conftest import free_port
from tests.proxy.conftest import Gateway

BASE_IMAGE = "python:3.11-slim"
# The image's user; the Kubernetes manifests run as the same uid (runAsUser).
IMAGE_UID = 10001


def runtime() -> list[Instruction]:
    return dockerfile_stages()[-1]


def only(stage: list[Instruction], cmd: str) -> Instruction:
    found = [i for i in stage if i.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd} in the stage, got {found}"
    return found[0]


def build_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (usable in FROM lines)."""
    args: dict[str, str] = {}
    for instruction in dockerfile_stages()[0]:
        if instruction.cmd == "FROM":
            break
        if instruction.cmd == "ARG":
            name, _, default = instruction.value[0].partition("=")
            args[name] = default
    return args


def base_of(stage: list[Instruction]) -> str:
    image = only(stage, "FROM").value[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m.group(1)], image)


def test_builder_and_runtime_stages_on_python_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    names = [only(stage, "FROM").value for stage in stages]
    assert all(len(name) == 3 and name[1].upper() == "AS" for name in names), names
    assert all(base_of(stage) == BASE_IMAGE for stage in stages)
    # The runtime takes the venv from the builder and installs nothing itself.
    builder = names[0][2]
    copies = [i for i in runtime() if i.cmd == "COPY"]
    assert copies and all(f"--from={builder}" in i.flags for i in copies)
    assert not any(i.cmd == "RUN" and "pip" in i.value[0] for i in runtime())
    assert any(i.cmd == "RUN" and "pip wheel" in i.value[0] for i in stages[0])


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    user = [i for i in runtime() if i.cmd == "USER"][-1].value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == IMAGE_UID, user
    assert gid.isdigit() and int(gid) != 0, user


def test_entry_point_is_spendgate_serve() -> None:
    entrypoint, cmd = only(runtime(), "ENTRYPOINT"), only(runtime(), "CMD")
    assert entrypoint.json and cmd.json  # exec form: spendgate is PID 1 and gets SIGTERM
    argv = [*entrypoint.value, *cmd.value]
    assert argv == ["spendgate", "serve"]
    with (ROOT / "pyproject.toml").open("rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    assert scripts[argv[0]] == "spendgate.cli:main"
    assert build_parser().parse_args(argv[1:]).func is cmd_serve


def test_image_environment_is_valid_settings_listening_on_every_interface() -> None:
    env = stage_env(runtime())
    spendgate = {name: value for name, value in env.items() if name.startswith("SPENDGATE_")}
    assert set(spendgate) <= SETTINGS_ENV
    settings = Settings.from_env(spendgate)
    assert settings.host == "0.0.0.0"
    # EXPOSE names the port setting, which is the default one.
    assert only(runtime(), "EXPOSE").value == ("${SPENDGATE_PORT}",)
    assert settings.port == Settings().port == int(env["SPENDGATE_PORT"])
    assert "/opt/spendgate/bin" in env["PATH"].split(":")


def test_healthcheck_asks_healthz_with_the_standard_library() -> None:
    check = only(runtime(), "HEALTHCHECK")
    assert check.json and check.value[:3] == ("CMD", "python", "-c")
    assert "/healthz" in check.value[3] and "/healthz" in get_routes()
    assert any(flag.startswith("--start-period=") for flag in check.flags)


async def run_healthcheck(port: int) -> int:
    """The HEALTHCHECK command as the image runs it, with this interpreter as `python`."""
    argv = list(only(runtime(), "HEALTHCHECK").value[1:])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv[1:],
        env={"PATH": os.environ["PATH"], "SPENDGATE_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=20)


async def test_healthcheck_passes_on_a_live_gateway(gateway: Gateway) -> None:
    server = gateway.admin.server
    assert isinstance(server, TestServer) and server.port is not None
    assert await run_healthcheck(server.port) == 0


async def test_healthcheck_fails_on_an_error_answer_or_no_answer(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/healthz", broken)
    server = await aiohttp_server(app)
    assert server.port is not None
    assert await run_healthcheck(server.port) != 0
    assert await run_healthcheck(free_port()) != 0  # nothing listens there


# --- the build context ---------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line, as Docker reads .dockerignore: `*` and `?` stay within
    one path segment, `**` spans any number, `!` re-includes, the last match wins."""
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        text = os.path.normpath(line.removeprefix("!").lstrip("/"))
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", text):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        patterns.append((excludes, re.compile(regex)))
    return patterns


def in_build_context(path: str) -> bool:
    """Whether `path` (relative to the repository root) is sent to the Docker engine. A
    pattern that matches a directory matches everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for excludes, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = not excludes
    return included


def copied_sources() -> list[str]:
    return [
        source
        for stage in dockerfile_stages()
        for i in stage
        if i.cmd in ("COPY", "ADD") and not any(f.startswith("--from=") for f in i.flags)
        for source in i.value[:-1]
    ]


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "spendgate"} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert in_build_context(relative), relative
    # What the wheel needs besides the Python files (pyproject's package-data).
    for data in ("spendgate/storage/migrations/0001_initial.sql", "spendgate/py.typed"):
        assert in_build_context(data)


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".spendgate/admin_token",
        "deploy/.env",
        "tests/conftest.py",
        "spendgate/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_secrets_and_local_state_stay_out_of_the_build_context(path: str) -> None:
    assert not in_build_context(path)


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    tool = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if tool is None:
        pytest.skip("hadolint is not installed (the test extras install it on x86-64 Linux)")
    done = subprocess.run(
        [tool, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # no .hadolint.yaml of anyone else's applies
    )
    assert done.returncode == 0, done.stdout + done.stderr
