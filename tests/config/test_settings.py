from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from spendgate.config import ConfigError, Settings


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.redis_prefix == "sg"
    assert settings.admin_token is None
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.workers == 0
    assert settings.providers_file is None
    assert settings.enforcement == "reserve"
    assert settings.mock_provider is True
    assert settings.mock_latency_ms == 0
    assert settings.secret_key is None
    assert settings.data_dir == Path(".spendgate")
    assert settings.log_level == "info"
    assert settings.default_max_output_tokens == 4096
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.metrics_port is None
    assert settings.key_cache_ttl == 5.0
    assert settings.buckets == 64


def test_explicit_environ_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPENDGATE_PORT", "9999")
    monkeypatch.setenv("SPENDGATE_ENFORCEMENT", "soft")
    assert Settings.from_env({}).port == 8080
    assert Settings.from_env({"SPENDGATE_PORT": "8181"}).port == 8181


def test_unprefixed_variables_are_ignored() -> None:
    assert Settings.from_env({"PORT": "1", "port": "2", "DATABASE_URL": "x"}) == Settings()


def test_every_variable_is_parsed() -> None:
    settings = Settings.from_env(
        {
            "SPENDGATE_DATABASE_URL": "postgresql://sg@127.0.0.1:5432/sg",
            "SPENDGATE_REDIS_URL": "redis://127.0.0.1:6379/3",
            "SPENDGATE_REDIS_PREFIX": "sgtest",
            "SPENDGATE_ADMIN_TOKEN": "a" * 16,
            "SPENDGATE_HOST": "0.0.0.0",
            "SPENDGATE_PORT": "9090",
            "SPENDGATE_WORKERS": "4",
            "SPENDGATE_PROVIDERS_FILE": "/etc/spendgate/providers.toml",
            "SPENDGATE_ENFORCEMENT": "hard",
            "SPENDGATE_MOCK_PROVIDER": "false",
            "SPENDGATE_MOCK_LATENCY_MS": "25",
            "SPENDGATE_SECRET_KEY": "s3cret-s3cret-s3cret",
            "SPENDGATE_DATA_DIR": "/var/lib/spendgate",
            "SPENDGATE_LOG_LEVEL": "debug",
            "SPENDGATE_DEFAULT_MAX_OUTPUT_TOKENS": "1024",
            "SPENDGATE_MAX_BODY_BYTES": "2048",
            "SPENDGATE_METRICS_PORT": "9100",
            "SPENDGATE_KEY_CACHE_TTL": "0.5",
            "SPENDGATE_BUCKETS": "16",
        }
    )
    assert settings == Settings(
        database_url="postgresql://sg@127.0.0.1:5432/sg",
        redis_url="redis://127.0.0.1:6379/3",
        redis_prefix="sgtest",
        admin_token="a" * 16,
        host="0.0.0.0",
        port=9090,
        workers=4,
        providers_file=Path("/etc/spendgate/providers.toml"),
        enforcement="hard",
        mock_provider=False,
        mock_latency_ms=25,
        secret_key="s3cret-s3cret-s3cret",
        data_dir=Path("/var/lib/spendgate"),
        log_level="debug",
        default_max_output_tokens=1024,
        max_body_bytes=2048,
        metrics_port=9100,
        key_cache_ttl=0.5,
        buckets=16,
    )
    assert isinstance(settings.port, int)
    assert isinstance(settings.providers_file, Path)
    assert isinstance(settings.data_dir, Path)
    assert isinstance(settings.key_cache_ttl, float)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bools(text: str, value: bool) -> None:
    assert Settings.from_env({"SPENDGATE_MOCK_PROVIDER": text}).mock_provider is value


@pytest.mark.parametrize(
    "var",
    [
        "SPENDGATE_DATABASE_URL",
        "SPENDGATE_REDIS_URL",
        "SPENDGATE_ADMIN_TOKEN",
        "SPENDGATE_PROVIDERS_FILE",
        "SPENDGATE_SECRET_KEY",
        "SPENDGATE_METRICS_PORT",
    ],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_optional_values_mean_unset(var: str, empty: str) -> None:
    settings = Settings.from_env({var: empty})
    assert settings == Settings()
    name = var.removeprefix("SPENDGATE_").lower()
    assert getattr(settings, name) is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SPENDGATE_PORT", "abc"),
        ("SPENDGATE_PORT", "0"),
        ("SPENDGATE_PORT", "65536"),
        ("SPENDGATE_PORT", "-80"),
        ("SPENDGATE_PORT", ""),
        ("SPENDGATE_PORT", "80.5"),
        ("SPENDGATE_ENFORCEMENT", "soft"),
        ("SPENDGATE_ENFORCEMENT", "RESERVE"),
        ("SPENDGATE_LOG_LEVEL", "loud"),
        ("SPENDGATE_LOG_LEVEL", "warn"),
        ("SPENDGATE_WORKERS", "-1"),
        ("SPENDGATE_WORKERS", "many"),
        ("SPENDGATE_ADMIN_TOKEN", "short"),
        ("SPENDGATE_SECRET_KEY", "too-short"),
        ("SPENDGATE_ADMIN_TOKEN", "a" * 15),
        ("SPENDGATE_MOCK_PROVIDER", "maybe"),
        ("SPENDGATE_MOCK_PROVIDER", ""),
        ("SPENDGATE_MOCK_LATENCY_MS", "-5"),
        ("SPENDGATE_DEFAULT_MAX_OUTPUT_TOKENS", "0"),
        ("SPENDGATE_MAX_BODY_BYTES", "0"),
        ("SPENDGATE_MAX_BODY_BYTES", "10MiB"),
        ("SPENDGATE_METRICS_PORT", "70000"),
        ("SPENDGATE_METRICS_PORT", "0"),
        ("SPENDGATE_KEY_CACHE_TTL", "-1"),
        ("SPENDGATE_KEY_CACHE_TTL", "nan"),
        ("SPENDGATE_KEY_CACHE_TTL", "soon"),
        ("SPENDGATE_KEY_CACHE_TTL", "inf"),
        ("SPENDGATE_HOST", " "),
        ("SPENDGATE_BUCKETS", "0"),
        ("SPENDGATE_BUCKETS", "16385"),
        ("SPENDGATE_REDIS_PREFIX", ""),
        ("SPENDGATE_REDIS_PREFIX", "sg{1}"),
        ("SPENDGATE_REDIS_PREFIX", "clé"),
    ],
)
def test_bad_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert info.value.name == var
    assert str(info.value).startswith(var + ": ")


def test_bad_value_message_does_not_echo_a_long_secret() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SPENDGATE_PORT": "x" * 500})
    assert "x" * 41 not in str(info.value)


def test_boundary_values_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "SPENDGATE_PORT": "65535",
            "SPENDGATE_METRICS_PORT": "1",
            "SPENDGATE_WORKERS": "0",
            "SPENDGATE_KEY_CACHE_TTL": "0",
            "SPENDGATE_BUCKETS": "16384",
            "SPENDGATE_ADMIN_TOKEN": "a" * 16,
        }
    )
    assert (settings.port, settings.metrics_port, settings.buckets) == (65535, 1, 16384)
    assert settings.key_cache_ttl == 0.0


# --- the Redis deployment --------------------------------------------------------------------

SEEDS = "redis://:pw@10.0.0.1:7000/0, redis://:pw@10.0.0.2:7000/0,redis://:pw@10.0.0.3:7001/0"


def test_a_cluster_takes_a_list_of_seed_nodes() -> None:
    settings = Settings.from_env({"SPENDGATE_REDIS_MODE": "cluster", "SPENDGATE_REDIS_URL": SEEDS})
    assert settings.redis_mode == "cluster"
    assert settings.redis_urls == (
        "redis://:pw@10.0.0.1:7000/0",
        "redis://:pw@10.0.0.2:7000/0",
        "redis://:pw@10.0.0.3:7001/0",
    )


def test_sentinel_takes_the_sentinels_a_master_name_and_their_password() -> None:
    settings = Settings.from_env(
        {
            "SPENDGATE_REDIS_MODE": "sentinel",
            "SPENDGATE_REDIS_URL": "rediss://:pw@s1:26379/2,rediss://:pw@s2:26379/2",
            "SPENDGATE_REDIS_SENTINEL_MASTER": "spendgate",
            "SPENDGATE_REDIS_SENTINEL_PASSWORD": "sentinel-pw",
        }
    )
    assert settings.redis_urls == ("rediss://:pw@s1:26379/2", "rediss://:pw@s2:26379/2")
    assert (settings.redis_sentinel_master, settings.redis_sentinel_password) == (
        "spendgate",
        "sentinel-pw",
    )


def test_standalone_is_the_default_and_has_one_url() -> None:
    settings = Settings.from_env({"SPENDGATE_REDIS_URL": "unix:///run/redis.sock?db=1"})
    assert settings.redis_mode == "standalone"
    assert settings.redis_urls == ("unix:///run/redis.sock?db=1",)
    assert Settings().redis_urls == ()


@pytest.mark.parametrize(
    ("environ", "var"),
    [
        ({"SPENDGATE_REDIS_MODE": "clustered"}, "SPENDGATE_REDIS_MODE"),
        # The embedded server is a single one: cluster and Sentinel need their URLs.
        ({"SPENDGATE_REDIS_MODE": "cluster"}, "SPENDGATE_REDIS_URL"),
        (
            {"SPENDGATE_REDIS_MODE": "sentinel", "SPENDGATE_REDIS_SENTINEL_MASTER": "m"},
            "SPENDGATE_REDIS_URL",
        ),
        (
            {"SPENDGATE_REDIS_MODE": "sentinel", "SPENDGATE_REDIS_URL": "redis://s:26379"},
            "SPENDGATE_REDIS_SENTINEL_MASTER",
        ),
        # Sentinel settings without Sentinel mean a forgotten REDIS_MODE.
        ({"SPENDGATE_REDIS_SENTINEL_MASTER": "m"}, "SPENDGATE_REDIS_SENTINEL_MASTER"),
        (
            {
                "SPENDGATE_REDIS_MODE": "cluster",
                "SPENDGATE_REDIS_URL": SEEDS,
                "SPENDGATE_REDIS_SENTINEL_PASSWORD": "x",
            },
            "SPENDGATE_REDIS_SENTINEL_PASSWORD",
        ),  # fmt: skip
        ({"SPENDGATE_REDIS_URL": "redis://a:6379,redis://b:6379"}, "SPENDGATE_REDIS_URL"),
        ({"SPENDGATE_REDIS_URL": "http://a:6379"}, "SPENDGATE_REDIS_URL"),
        (
            {"SPENDGATE_REDIS_MODE": "cluster", "SPENDGATE_REDIS_URL": "redis://a:7000/3"},
            "SPENDGATE_REDIS_URL",
        ),  # a cluster has only database 0
        (
            {"SPENDGATE_REDIS_MODE": "cluster", "SPENDGATE_REDIS_URL": "unix:///run/r.sock"},
            "SPENDGATE_REDIS_URL",
        ),
        (
            {"SPENDGATE_REDIS_MODE": "cluster", "SPENDGATE_REDIS_URL": "redis://a:7000,,"},
            "SPENDGATE_REDIS_URL",
        ),
        (
            {"SPENDGATE_REDIS_MODE": "cluster", "SPENDGATE_REDIS_URL": "redis://a:70000"},
            "SPENDGATE_REDIS_URL",
        ),
        (
            {"SPENDGATE_REDIS_MODE": "cluster", "SPENDGATE_REDIS_URL": "redis://a:7000/x"},
            "SPENDGATE_REDIS_URL",
        ),
    ],
)
def test_a_redis_deployment_that_does_not_fit_names_the_variable(
    environ: dict[str, str], var: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert info.value.name == var


def test_urls_that_disagree_on_credentials_are_refused_without_echoing_them() -> None:
    urls = "redis://:first-secret@a:7000,redis://:second-secret@b:7000"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SPENDGATE_REDIS_MODE": "cluster", "SPENDGATE_REDIS_URL": urls})
    assert info.value.name == "SPENDGATE_REDIS_URL"
    assert "agree" in str(info.value) and "secret" not in str(info.value)


def test_toml_file_supplies_values_by_field_name(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "spendgate.toml",
        """
port = 9000
enforcement = "hard"
mock_provider = false
log_level = "warning"
data_dir = "/srv/sg"
providers_file = "providers.toml"
key_cache_ttl = 2
metrics_port = 9101
database_url = "postgresql://db/sg"
""",
    )
    settings = Settings.from_env({"SPENDGATE_CONFIG_FILE": str(config)})
    assert settings.port == 9000
    assert settings.enforcement == "hard"
    assert settings.mock_provider is False
    assert settings.log_level == "warning"
    assert settings.data_dir == Path("/srv/sg")
    assert settings.providers_file == Path("providers.toml")
    assert settings.key_cache_ttl == 2.0
    assert settings.metrics_port == 9101
    assert settings.database_url == "postgresql://db/sg"
    # Fields the file does not mention keep their defaults.
    assert settings.host == "127.0.0.1"
    assert settings.buckets == 64


def test_environment_wins_over_the_toml_file(tmp_path: Path) -> None:
    config = _write(tmp_path / "spendgate.toml", 'port = 9000\nlog_level = "error"\n')
    settings = Settings.from_env({"SPENDGATE_CONFIG_FILE": str(config), "SPENDGATE_PORT": "9500"})
    assert settings.port == 9500
    assert settings.log_level == "error"


def test_empty_config_file_variable_means_no_file() -> None:
    assert Settings.from_env({"SPENDGATE_CONFIG_FILE": ""}) == Settings()


@pytest.mark.parametrize(
    ("text", "var"),
    [
        ("port = 0\n", "SPENDGATE_PORT"),
        ('port = "abc"\n', "SPENDGATE_PORT"),
        ("port = 80.5\n", "SPENDGATE_PORT"),
        ("port = true\n", "SPENDGATE_PORT"),
        ("workers = false\n", "SPENDGATE_WORKERS"),
        ('enforcement = "soft"\n', "SPENDGATE_ENFORCEMENT"),
        ('mock_provider = "maybe"\n', "SPENDGATE_MOCK_PROVIDER"),
        ('admin_token = "short"\n', "SPENDGATE_ADMIN_TOKEN"),
    ],
)
def test_bad_value_in_the_toml_file_names_the_variable(tmp_path: Path, text: str, var: str) -> None:
    config = _write(tmp_path / "spendgate.toml", text)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SPENDGATE_CONFIG_FILE": str(config)})
    assert info.value.name == var


def test_bad_toml_value_is_fixed_by_the_environment(tmp_path: Path) -> None:
    config = _write(tmp_path / "spendgate.toml", 'log_level = "loud"\n')
    settings = Settings.from_env(
        {"SPENDGATE_CONFIG_FILE": str(config), "SPENDGATE_LOG_LEVEL": "debug"}
    )
    assert settings.log_level == "debug"


@pytest.mark.parametrize("text", ["colour = 'blue'\n", "[server]\nport = 1\n", "PORT = 1\n"])
def test_unknown_key_in_the_toml_file_is_refused(tmp_path: Path, text: str) -> None:
    config = _write(tmp_path / "spendgate.toml", text)
    with pytest.raises(ConfigError, match="unknown setting") as info:
        Settings.from_env({"SPENDGATE_CONFIG_FILE": str(config)})
    assert info.value.name == "SPENDGATE_CONFIG_FILE"
    assert str(config) in str(info.value)


def test_missing_toml_file_names_the_config_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SPENDGATE_CONFIG_FILE": str(missing)})
    assert info.value.name == "SPENDGATE_CONFIG_FILE"
    assert str(missing) in str(info.value)


def test_directory_as_toml_file_names_the_config_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SPENDGATE_CONFIG_FILE": str(tmp_path)})
    assert info.value.name == "SPENDGATE_CONFIG_FILE"


def test_invalid_toml_names_the_config_variable(tmp_path: Path) -> None:
    config = _write(tmp_path / "spendgate.toml", "port = = 1\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SPENDGATE_CONFIG_FILE": str(config)})
    assert info.value.name == "SPENDGATE_CONFIG_FILE"


def test_toml_file_not_in_utf8_names_the_config_variable(tmp_path: Path) -> None:
    # Saved by an editor in Latin-1: tomllib raises UnicodeDecodeError while decoding.
    config = tmp_path / "spendgate.toml"
    config.write_bytes('host = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SPENDGATE_CONFIG_FILE": str(config)})
    assert info.value.name == "SPENDGATE_CONFIG_FILE"


# --- frozen ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [("port", 1), ("admin_token", "x" * 32)])
def test_settings_are_frozen(name: str, value: Any) -> None:
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, name, value)
    assert getattr(settings, name) != value


def test_replace_returns_a_validated_copy() -> None:
    settings = Settings.from_env({})
    changed = settings.replace(port=9001)
    assert changed.port == 9001
    assert settings.port == 8080
    with pytest.raises(ConfigError) as info:
        settings.replace(port=0)
    assert info.value.name == "SPENDGATE_PORT"
