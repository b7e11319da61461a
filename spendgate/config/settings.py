"""Settings: every field with its environment variable and default, parsed once.

`Settings.from_env()` reads `SPENDGATE_*` variables (and an optional TOML file named by
`SPENDGATE_CONFIG_FILE`, whose keys are the field names; the environment wins), validates
every value and returns a frozen object that is passed down. Nothing else reads the
environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from spendgate.config.errors import ConfigError

ENV_PREFIX = "SPENDGATE_"
LOG_LEVELS = ("debug", "info", "warning", "error")
ENFORCEMENT_MODES = ("reserve", "hard")
REDIS_MODES = ("standalone", "cluster", "sentinel")


def _env(name: str) -> dict[str, str]:
    return {"env": ENV_PREFIX + name}


@dataclass(frozen=True, slots=True)
class Settings:
    # Servers. None means: start the embedded ones under data_dir (`spendgate serve`).
    database_url: str | None = field(default=None, metadata=_env("DATABASE_URL"))
    redis_url: str | None = field(default=None, metadata=_env("REDIS_URL"))
    # How REDIS_URL is read: `standalone`, one server; `cluster`, seed nodes of a Redis
    # Cluster; `sentinel`, the Sentinels that know the master named REDIS_SENTINEL_MASTER.
    # Cluster and Sentinel URLs may be a comma-separated list; user, password, database
    # and TLS in them are the data nodes' (docs/DECISIONS.md, "Redis deployments").
    redis_mode: str = field(default="standalone", metadata=_env("REDIS_MODE"))
    redis_sentinel_master: str | None = field(default=None, metadata=_env("REDIS_SENTINEL_MASTER"))
    # The Sentinels' own password (`requirepass` in sentinel.conf), if they have one.
    redis_sentinel_password: str | None = field(
        default=None, metadata=_env("REDIS_SENTINEL_PASSWORD")
    )
    # Every Redis key spendgate writes starts with this prefix (tests isolate by it).
    redis_prefix: str = field(default="sg", metadata=_env("REDIS_PREFIX"))
    admin_token: str | None = field(default=None, metadata=_env("ADMIN_TOKEN"))
    host: str = field(default="127.0.0.1", metadata=_env("HOST"))
    port: int = field(default=8080, metadata=_env("PORT"))
    workers: int = field(default=0, metadata=_env("WORKERS"))  # 0: one per core
    providers_file: Path | None = field(default=None, metadata=_env("PROVIDERS_FILE"))
    enforcement: str = field(default="reserve", metadata=_env("ENFORCEMENT"))
    mock_provider: bool = field(default=True, metadata=_env("MOCK_PROVIDER"))
    mock_latency_ms: int = field(default=0, metadata=_env("MOCK_LATENCY_MS"))
    secret_key: str | None = field(default=None, metadata=_env("SECRET_KEY"))
    data_dir: Path = field(default=Path(".spendgate"), metadata=_env("DATA_DIR"))
    log_level: str = field(default="info", metadata=_env("LOG_LEVEL"))
    default_max_output_tokens: int = field(default=4096, metadata=_env("DEFAULT_MAX_OUTPUT_TOKENS"))
    max_body_bytes: int = field(default=10 * 1024 * 1024, metadata=_env("MAX_BODY_BYTES"))
    metrics_port: int | None = field(default=None, metadata=_env("METRICS_PORT"))
    # Seconds a process keeps a key record before asking Redis again; invalidation
    # messages drop entries at once, so this only bounds a missed message.
    key_cache_ttl: float = field(default=5.0, metadata=_env("KEY_CACHE_TTL"))
    # Upstream timeouts in seconds: connecting; waiting for the first byte (and, in a
    # stream, for each next chunk); a whole answer, streams included.
    upstream_connect_timeout: float = field(default=10.0, metadata=_env("UPSTREAM_CONNECT_TIMEOUT"))
    upstream_first_byte_timeout: float = field(
        default=120.0, metadata=_env("UPSTREAM_FIRST_BYTE_TIMEOUT")
    )
    upstream_timeout: float = field(default=900.0, metadata=_env("UPSTREAM_TIMEOUT"))
    # Seconds to keep reading a stream whose client went away, for the provider's usage.
    disconnect_grace: float = field(default=2.0, metadata=_env("DISCONNECT_GRACE"))
    # A usage event read by a replica that then died is taken over by another replica's
    # ledger writer once it has waited this long (milliseconds).
    ledger_claim_idle_ms: int = field(default=30_000, metadata=_env("LEDGER_CLAIM_IDLE_MS"))
    # Number of buckets API keys are spread over; fixed for the life of a deployment.
    buckets: int = field(default=64, metadata=_env("BUCKETS"))

    def __post_init__(self) -> None:
        _check(self.enforcement in ENFORCEMENT_MODES, "ENFORCEMENT", "reserve or hard")
        _check(self.log_level in LOG_LEVELS, "LOG_LEVEL", "debug, info, warning or error")
        _check(0 < self.port < 65536, "PORT", "a TCP port, 1-65535")
        _check(self.workers >= 0, "WORKERS", "0 (one per core) or more")
        _check(self.mock_latency_ms >= 0, "MOCK_LATENCY_MS", "0 or more")
        _check(self.default_max_output_tokens > 0, "DEFAULT_MAX_OUTPUT_TOKENS", "1 or more")
        _check(self.max_body_bytes > 0, "MAX_BODY_BYTES", "1 or more")
        _check(0 <= self.key_cache_ttl <= 3600, "KEY_CACHE_TTL", "0 to 3600 seconds")
        _check(bool(self.host.strip()), "HOST", "an address to listen on")
        _check(1 <= self.buckets <= 16384, "BUCKETS", "1 to 16384")
        for var, value in (
            ("UPSTREAM_CONNECT_TIMEOUT", self.upstream_connect_timeout),
            ("UPSTREAM_FIRST_BYTE_TIMEOUT", self.upstream_first_byte_timeout),
            ("UPSTREAM_TIMEOUT", self.upstream_timeout),
        ):
            _check(0 < value <= 86400, var, "more than 0 and at most 86400 seconds")
        _check(0 <= self.disconnect_grace <= 60, "DISCONNECT_GRACE", "0 to 60 seconds")
        _check(
            100 <= self.ledger_claim_idle_ms <= 3_600_000,
            "LEDGER_CLAIM_IDLE_MS",
            "100 to 3600000 milliseconds",
        )
        _check_redis(self)
        _check(bool(self.redis_prefix), "REDIS_PREFIX", "not empty")
        _check(
            self.redis_prefix.isascii() and "{" not in self.redis_prefix,
            "REDIS_PREFIX",
            "ASCII without '{'",
        )
        if self.metrics_port is not None:
            _check(0 < self.metrics_port < 65536, "METRICS_PORT", "a TCP port, 1-65535")
        if self.secret_key is not None:
            _check(len(self.secret_key) >= 16, "SECRET_KEY", "at least 16 characters")
        if self.admin_token is not None:
            _check(len(self.admin_token) >= 16, "ADMIN_TOKEN", "at least 16 characters")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = env.get(ENV_PREFIX + "CONFIG_FILE")
        if config_file:
            known = {f.name for f in dataclasses.fields(cls)}
            for key, value in _read_toml(Path(config_file)).items():
                if key not in known:
                    raise ConfigError(
                        ENV_PREFIX + "CONFIG_FILE", f"{config_file}: {key}: unknown setting"
                    )
                values[key] = value
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env:
                values[f.name] = env[name]
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Build settings from raw values keyed by field name (strings or TOML values)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        parsed: dict[str, Any] = {}
        for key, raw in values.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(ENV_PREFIX + key.upper(), "unknown setting")
            var = f.metadata["env"].removeprefix(ENV_PREFIX)
            parsed[key] = _parse(var, f.type, raw)
        return cls(**parsed)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def redis_urls(self) -> tuple[str, ...]:
        """The URLs of REDIS_URL: the server, a cluster's seed nodes, or the Sentinels."""
        if self.redis_url is None:
            return ()
        return tuple(url.strip() for url in self.redis_url.split(","))


def _check(ok: bool, var: str, expected: str) -> None:
    if not ok:
        raise ConfigError(ENV_PREFIX + var, f"must be {expected}")


def _check_redis(settings: Settings) -> None:
    """The Redis deployment: a mode, URLs that fit it, a master name for Sentinel. Messages
    never echo a URL (it may hold a password)."""
    mode = settings.redis_mode
    _check(mode in REDIS_MODES, "REDIS_MODE", "standalone, cluster or sentinel")
    sentinel = mode == "sentinel"
    if sentinel:
        _check(
            bool(settings.redis_sentinel_master), "REDIS_SENTINEL_MASTER", "set in sentinel mode"
        )
    for var, value in (
        ("REDIS_SENTINEL_MASTER", settings.redis_sentinel_master),
        ("REDIS_SENTINEL_PASSWORD", settings.redis_sentinel_password),
    ):
        _check(sentinel or value is None, var, "unset unless REDIS_MODE is sentinel")
    if settings.redis_url is None:
        # The embedded server spendgate starts is a single one.
        _check(mode == "standalone", "REDIS_URL", f"set in {mode} mode")
        return
    urls = [_split_url(url) for url in settings.redis_urls]
    if mode == "standalone":
        _check(len(urls) == 1, "REDIS_URL", "one URL in standalone mode")
        _check(
            urls[0].scheme in ("redis", "rediss", "unix"),
            "REDIS_URL",
            "a redis://, rediss:// or unix:// URL",
        )
        return
    for url in urls:
        _check(
            url.scheme in ("redis", "rediss"),
            "REDIS_URL",
            f"redis:// or rediss:// URLs in {mode} mode",
        )
        _check(bool(url.hostname), "REDIS_URL", "URLs that name a host")
        _check(
            url.path in ("", "/") or url.path[1:].isdigit(),
            "REDIS_URL",
            "URLs whose path is a database number",
        )
    _check(
        len({(u.scheme, u.username, u.password, u.path.strip("/") or "0") for u in urls}) == 1,
        "REDIS_URL",
        "URLs that agree on scheme, user, password and database",
    )
    if mode == "cluster":
        _check(urls[0].path.strip("/") in ("", "0"), "REDIS_URL", "database 0 in cluster mode")


def _split_url(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port out of range or not a number raises here)
    except ValueError:
        raise ConfigError(ENV_PREFIX + "REDIS_URL", "must be a URL with a valid port") from None
    return parts


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError too
        raise ConfigError(ENV_PREFIX + "CONFIG_FILE", f"cannot read {path}: {exc}") from exc


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "Path": Path,
}


def _parse(var: str, type_text: Any, raw: Any) -> Any:
    """Parse one raw value by the field's annotation text ('int', 'Path | None'...)."""
    type_name = str(type_text)
    optional = type_name.endswith(" | None")
    base = type_name.removesuffix(" | None")
    if raw is None or (optional and isinstance(raw, str) and raw.strip() == ""):
        if optional:
            return None
        raise ConfigError(ENV_PREFIX + var, "must be set")
    if base == "bool" and isinstance(raw, bool):
        return raw
    if base in ("int", "float") and isinstance(raw, bool):
        raise ConfigError(
            ENV_PREFIX + var, f"must be {'an integer' if base == 'int' else 'a number'}"
        )
    try:
        return _PARSERS[base](str(raw))
    except ValueError as exc:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(base, base)
        raise ConfigError(ENV_PREFIX + var, f"must be {kind}, got {str(raw)[:40]!r}") from exc
