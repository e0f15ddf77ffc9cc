"""Configuration: layering, path resolution and error messages that name key and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import ConfigError, load_settings, split_listen


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.listen == "127.0.0.1:8765"
    assert (settings.host, settings.port) == ("127.0.0.1", 8765)
    assert settings.data_dir == tmp_path / ".tether"
    assert settings.policies == tmp_path / "policies"
    assert settings.database == f"sqlite+aiosqlite:///{tmp_path / '.tether' / 'tether.db'}"
    assert settings.log_level == "info"
    assert settings.policy_watch is True


def test_yaml_file_paths_resolve_against_the_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "etc" / "tether.yaml",
        "listen: 0.0.0.0:9000\npolicies: pol\ndata_dir: /var/lib/tether\npolicy_watch: false\n",
    )
    settings = load_settings(config, environ={}, cwd=tmp_path / "elsewhere")
    assert settings.listen == "0.0.0.0:9000"
    assert settings.policies == tmp_path / "etc" / "pol"
    assert settings.data_dir == Path("/var/lib/tether")
    assert settings.policy_watch is False


def test_toml_file(tmp_path: Path) -> None:
    config = write(tmp_path / "tether.toml", 'listen = "[::1]:8000"\nlog_level = "DEBUG"\n')
    settings = load_settings(config, environ={}, cwd=tmp_path)
    assert (settings.host, settings.port) == ("::1", 8000)
    assert settings.log_level == "debug"


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    config = write(tmp_path / "c" / "tether.yaml", "listen: 1.1.1.1:1\npolicies: from-file\n")
    env = {"TETHER_LISTEN": "2.2.2.2:2", "TETHER_LOG_LEVEL": "warning"}
    settings = load_settings(config, environ=env, overrides={"listen": "3.3.3.3:3"}, cwd=tmp_path)
    assert settings.listen == "3.3.3.3:3"  # CLI beats env beats file
    assert settings.log_level == "warning"  # env beats default
    assert settings.policies == tmp_path / "c" / "from-file"  # file beats default
    env_only = load_settings(config, environ=env, cwd=tmp_path)
    assert env_only.listen == "2.2.2.2:2"


def test_env_and_cli_paths_resolve_against_the_working_directory(tmp_path: Path) -> None:
    config = write(tmp_path / "c" / "tether.yaml", "policies: from-file\n")
    settings = load_settings(
        config,
        environ={"TETHER_POLICIES": "from-env"},
        overrides={"data_dir": "from-cli", "policies": None},
        cwd=tmp_path,
    )
    assert settings.policies == tmp_path / "from-env"
    assert settings.data_dir == tmp_path / "from-cli"


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "t.yaml", "listen: 127.0.0.1:1234\n")
    settings = load_settings(environ={"TETHER_CONFIG": str(config)}, cwd=tmp_path)
    assert settings.port == 1234


def test_database_url_gets_the_async_driver(tmp_path: Path) -> None:
    pg = load_settings(environ={"TETHER_DATABASE_URL": "postgresql://u:pw@db/tether"})
    assert pg.database == "postgresql+asyncpg://u:pw@db/tether"
    assert "pw" not in repr(pg)
    lite = load_settings(environ={"TETHER_DATABASE_URL": "sqlite:///x.db"}, cwd=tmp_path)
    assert lite.database == "sqlite+aiosqlite:///x.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: x\n", "tether.yaml: listen: expected HOST:PORT, got 'x'"),
        ("listen: 'h:99999'\n", "tether.yaml: listen: expected HOST:PORT, got 'h:99999'"),
        ("listen: 8765\n", "tether.yaml: listen: Input should be a valid string, got 8765"),
        ("lisen: 127.0.0.1:1\n", "tether.yaml: lisen: unknown setting"),
        ("policy_watch: maybe\n", "tether.yaml: policy_watch: Input should be a valid boolean"),
        ("log_level: loud\n", "tether.yaml: log_level: Input should be 'debug'"),
        ("- a list\n", "tether.yaml: expected a mapping of settings at the top level"),
        ("listen: [\n", "tether.yaml:2: invalid YAML"),
    ],
)
def test_file_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "tether.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={}, cwd=tmp_path)
    assert str(caught.value).replace(str(tmp_path) + "/", "").startswith(message)


def test_every_error_is_reported(tmp_path: Path) -> None:
    config = write(tmp_path / "tether.yaml", "listen: x\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={}, cwd=tmp_path)
    assert len(str(caught.value).splitlines()) == 2


def test_database_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"TETHER_DATABASE_URL": "mysql://u:hunter2@h/db"})
    message = str(caught.value)
    assert message.startswith("environment variable TETHER_DATABASE_URL: database_url:")
    assert "hunter2" not in message


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable TETHER_LISTEN: listen: "):
        load_settings(environ={"TETHER_LISTEN": "nope"})
    with pytest.raises(ConfigError, match=r"TETHER_LISEN: lisen: unknown setting"):
        load_settings(environ={"TETHER_LISEN": "x"})
    with pytest.raises(ConfigError, match=r"TETHER_API__LISTEN: api: unknown setting"):
        load_settings(environ={"TETHER_API__LISTEN": "x"})
    with pytest.raises(ConfigError, match=r"TETHER___X: malformed"):
        load_settings(environ={"TETHER___X": "x"})


def test_cli_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--listen: listen: expected HOST:PORT"):
        load_settings(environ={}, overrides={"listen": "nope"})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.yaml", None, "config file not found"),
        ("tether.ini", "listen = x", "unknown config format '.ini'"),
        ("tether.toml", "listen = ", "invalid TOML"),
        ("tether.yaml", b"listen: \xff\n", "not valid UTF-8"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str | bytes | None, message: str) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={}, cwd=tmp_path)


def test_empty_yaml_file_is_all_defaults(tmp_path: Path) -> None:
    config = write(tmp_path / "tether.yml", "# nothing yet\n")
    assert load_settings(config, environ={}, cwd=tmp_path).port == 8765


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::]:0", ("::", 0)), ("localhost:1", ("localhost", 1))],
)
def test_split_listen(value: str, expected: tuple[str, int]) -> None:
    assert split_listen(value) == expected


@pytest.mark.parametrize("value", ["", ":80", "host", "host:", "host:-1", "host:65536", "h:8a"])
def test_split_listen_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        split_listen(value)
