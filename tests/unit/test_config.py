"""gateway.config.load_settings: defaults, the TOML file, environment overrides and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import RouteSettings, Settings, load_settings
from gateway.errors import ConfigError


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in an empty directory, so no real config/<run_mode>.toml is picked up."""
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_file(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path / "gateway.toml", text), environ=environ or {})


def test_defaults_without_file_or_environment() -> None:
    """With no config file and no TASK_GATEWAY__ variables, every setting has its default."""
    settings = load_settings(environ={"PATH": "/usr/bin", "TASK_GATEWAY": "ignored"})

    assert settings == Settings()
    assert settings.run_mode == "development"
    assert settings.grpc.address == "0.0.0.0:50051"
    assert settings.grpc.max_request_bytes == 1024 * 1024
    assert settings.server.address == "0.0.0.0:10010"
    assert settings.broker.address == ""
    assert settings.broker_urls == ()
    assert settings.broker.max_in_flight == 4096
    assert settings.log.format == "auto"
    assert settings.routes == ()


def test_file_values_are_read(tmp_path: Path) -> None:
    """Values in the TOML file replace the defaults, section by section."""
    settings = load_file(
        tmp_path,
        """
        run_mode = "staging"
        [grpc]
        address = "127.0.0.1:6000"
        max_request_bytes = 2048
        shutdown_grace_seconds = 0
        [server]
        address = "127.0.0.1:6001"
        [broker]
        address = "amqp://guest:guest@rabbit:5672/"
        heartbeat_seconds = 3
        publish_timeout_seconds = 2.5
        connect_timeout_seconds = 1
        max_in_flight = 7
        app_id = "my-gateway"
        [log]
        format = "json"
        level = "debug"
        """,
    )

    assert settings.run_mode == "staging"
    assert settings.grpc.address == "127.0.0.1:6000"
    assert settings.grpc.max_request_bytes == 2048
    assert settings.grpc.shutdown_grace_seconds == 0.0
    assert settings.server.address == "127.0.0.1:6001"
    assert settings.broker.address == "amqp://guest:guest@rabbit:5672/"
    assert settings.broker.heartbeat_seconds == 3
    assert settings.broker.publish_timeout_seconds == 2.5
    # An integer is accepted where a float is expected, and becomes a float.
    assert settings.broker.connect_timeout_seconds == 1.0
    assert isinstance(settings.broker.connect_timeout_seconds, float)
    assert settings.broker.max_in_flight == 7
    assert settings.broker.app_id == "my-gateway"
    assert settings.log.format == "json"
    assert settings.log.level == "debug"
    # Keys the file leaves out keep their defaults.
    assert settings.broker.reconnect_max_backoff_seconds == 5.0


@pytest.mark.parametrize(
    ("variable", "value", "key", "expected"),
    [
        (
            "TASK_GATEWAY__BROKER__ADDRESS",
            "amqp://guest:guest@rabbit:5672/",
            "broker.address",
            "amqp://guest:guest@rabbit:5672/",
        ),
        ("TASK_GATEWAY__GRPC__ADDRESS", "127.0.0.1:7000", "grpc.address", "127.0.0.1:7000"),
        ("TASK_GATEWAY__SERVER__ADDRESS", "127.0.0.1:7001", "server.address", "127.0.0.1:7001"),
        ("TASK_GATEWAY__BROKER__MAX_IN_FLIGHT", "12", "broker.max_in_flight", 12),
        (
            "TASK_GATEWAY__BROKER__PUBLISH_TIMEOUT_SECONDS",
            "0.25",
            "broker.publish_timeout_seconds",
            0.25,
        ),
        ("TASK_GATEWAY__LOG__LEVEL", "warning", "log.level", "warning"),
    ],
)
def test_environment_overrides_a_setting(
    variable: str, value: str, key: str, expected: object
) -> None:
    """A TASK_GATEWAY__SECTION__KEY variable sets that key, converted to the key's type."""
    settings = load_settings(environ={variable: value})

    section, name = key.split(".")
    actual = getattr(getattr(settings, section), name)
    assert actual == expected
    assert type(actual) is type(expected)


def test_run_mode_from_environment_picks_its_config_file(tmp_path: Path) -> None:
    """TASK_GATEWAY__RUN_MODE=production reads config/production.toml relative to the cwd."""
    write(tmp_path / "config/production.toml", '[grpc]\naddress = "10.0.0.1:50051"\n')
    write(tmp_path / "config/development.toml", '[grpc]\naddress = "10.0.0.2:50051"\n')

    settings = load_settings(environ={"TASK_GATEWAY__RUN_MODE": "production"})

    assert settings.run_mode == "production"
    assert settings.grpc.address == "10.0.0.1:50051"


def test_development_config_file_is_the_default(tmp_path: Path) -> None:
    """Without TASK_GATEWAY__RUN_MODE, config/development.toml in the cwd is read."""
    write(tmp_path / "config/development.toml", '[grpc]\naddress = "10.0.0.2:50051"\n')

    settings = load_settings(environ={})

    assert settings.grpc.address == "10.0.0.2:50051"


def test_environment_wins_over_file(tmp_path: Path) -> None:
    """An environment variable overrides the same key in the file and leaves its siblings."""
    settings = load_file(
        tmp_path,
        '[broker]\naddress = "amqp://file:5672/"\nmax_in_flight = 5\n',
        environ={"TASK_GATEWAY__BROKER__ADDRESS": "amqp://env:5672/"},
    )

    assert settings.broker.address == "amqp://env:5672/"
    assert settings.broker.max_in_flight == 5


def test_comma_separated_broker_addresses_become_broker_urls() -> None:
    """A comma-separated broker address yields each URL, stripped, empty parts dropped."""
    settings = load_settings(
        environ={"TASK_GATEWAY__BROKER__ADDRESS": " amqp://a:5672/ ,amqps://b:5671/vh,, "}
    )

    assert settings.broker_urls == ("amqp://a:5672/", "amqps://b:5671/vh")


def test_routes_tables_become_route_settings(tmp_path: Path) -> None:
    """Each [[routes]] table becomes a RouteSettings, routing_key empty unless given."""
    settings = load_file(
        tmp_path,
        """
        [[routes]]
        task_type = "audio.generate"
        exchange = "audio.tasks"
        service_name = "audio-generation"

        [[routes]]
        task_type = "text.summarize"
        exchange = "text.tasks"
        service_name = "text"
        routing_key = "summaries"
        """,
    )

    assert settings.routes == (
        RouteSettings("audio.generate", "audio.tasks", "audio-generation", ""),
        RouteSettings("text.summarize", "text.tasks", "text", "summaries"),
    )


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    """An unknown key in the file stops loading with an error naming section.key."""
    with pytest.raises(ConfigError, match=r"unknown setting grpc\.adress"):
        load_file(tmp_path, '[grpc]\nadress = "127.0.0.1:1"\n')


def test_unknown_section_in_file_is_named(tmp_path: Path) -> None:
    """An unknown top-level table in the file stops loading with an error naming it."""
    with pytest.raises(ConfigError, match=r"unknown setting brokers\b"):
        load_file(tmp_path, '[brokers]\naddress = ""\n')


def test_unknown_key_in_environment_names_the_variable() -> None:
    """An unknown TASK_GATEWAY__ variable stops loading with an error naming that variable."""
    with pytest.raises(ConfigError, match="TASK_GATEWAY__BROKER__ADRESS"):
        load_settings(environ={"TASK_GATEWAY__BROKER__ADRESS": "amqp://x:5672/"})


def test_unknown_key_in_environment_is_refused() -> None:
    """An unknown TASK_GATEWAY__ variable stops loading with an error naming the key."""
    with pytest.raises(ConfigError, match=r"unknown setting broker\.adress"):
        load_settings(environ={"TASK_GATEWAY__BROKER__ADRESS": "amqp://x:5672/"})


def test_wrong_type_in_file_is_named(tmp_path: Path) -> None:
    """A string where an integer belongs stops loading with an error naming the key."""
    with pytest.raises(ConfigError, match=r"grpc\.max_request_bytes: expected int"):
        load_file(tmp_path, '[grpc]\nmax_request_bytes = "big"\n')


def test_boolean_is_not_an_integer(tmp_path: Path) -> None:
    """A TOML boolean is refused for an integer setting, naming the key."""
    with pytest.raises(ConfigError, match=r"broker\.max_in_flight: expected int"):
        load_file(tmp_path, "[broker]\nmax_in_flight = true\n")


def test_wrong_type_in_environment_names_key_and_variable() -> None:
    """A non-numeric value for a numeric variable names both the key and the variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"TASK_GATEWAY__BROKER__HEARTBEAT_SECONDS": "often"})

    message = str(caught.value)
    assert "broker.heartbeat_seconds" in message
    assert "TASK_GATEWAY__BROKER__HEARTBEAT_SECONDS" in message
    assert "'often'" in message


def test_value_outside_choices_is_named() -> None:
    """A log level that is not one of the choices names the key and the choices."""
    with pytest.raises(ConfigError, match=r"log\.level.*'verbose' is not one of debug"):
        load_settings(environ={"TASK_GATEWAY__LOG__LEVEL": "verbose"})


@pytest.mark.parametrize(
    ("variable", "key", "address"),
    [
        ("TASK_GATEWAY__GRPC__ADDRESS", "grpc.address", "localhost"),
        ("TASK_GATEWAY__GRPC__ADDRESS", "grpc.address", ":50051"),
        ("TASK_GATEWAY__GRPC__ADDRESS", "grpc.address", "localhost:http"),
        ("TASK_GATEWAY__SERVER__ADDRESS", "server.address", "localhost:70000"),
        ("TASK_GATEWAY__SERVER__ADDRESS", "server.address", "localhost:"),
    ],
)
def test_bad_host_port_is_named(variable: str, key: str, address: str) -> None:
    """An address that is not host:port with a port of 0-65535 is refused, naming the key."""
    with pytest.raises(ConfigError, match=rf"{key}: '{address}' is not host:port"):
        load_settings(environ={variable: address})


def test_ipv6_host_port_is_accepted() -> None:
    """A bracketed IPv6 host with a port is a valid address."""
    settings = load_settings(environ={"TASK_GATEWAY__GRPC__ADDRESS": "[::]:50051"})

    assert settings.grpc.address == "[::]:50051"


@pytest.mark.parametrize(
    "key",
    [
        "grpc.max_request_bytes",
        "broker.heartbeat_seconds",
        "broker.connect_timeout_seconds",
        "broker.reconnect_max_backoff_seconds",
        "broker.publish_timeout_seconds",
        "broker.max_in_flight",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_number_is_named(key: str, value: str) -> None:
    """Zero or a negative value for a count, size or timeout is refused, naming the key."""
    section, name = key.split(".")
    variable = f"TASK_GATEWAY__{section.upper()}__{name.upper()}"

    with pytest.raises(ConfigError, match=rf"{key}: must be greater than 0"):
        load_settings(environ={variable: value})


def test_nan_timeout_is_refused() -> None:
    """A NaN timeout is not greater than 0 and is refused, naming the key."""
    with pytest.raises(ConfigError, match=r"broker\.publish_timeout_seconds"):
        load_settings(environ={"TASK_GATEWAY__BROKER__PUBLISH_TIMEOUT_SECONDS": "nan"})


def test_negative_shutdown_grace_is_named() -> None:
    """A negative shutdown grace is refused, naming the key (zero is allowed)."""
    with pytest.raises(ConfigError, match=r"grpc\.shutdown_grace_seconds: must not be negative"):
        load_settings(environ={"TASK_GATEWAY__GRPC__SHUTDOWN_GRACE_SECONDS": "-0.5"})


def test_non_amqp_broker_url_is_named() -> None:
    """A broker address that is not amqp:// or amqps:// is refused, naming the bad URL."""
    with pytest.raises(ConfigError, match=r"broker\.address: 'http://rabbit:15672/' is not"):
        load_settings(
            environ={"TASK_GATEWAY__BROKER__ADDRESS": "amqp://rabbit:5672/,http://rabbit:15672/"}
        )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("amqp://h:notaport/", "Port could not be cast"),
        ("amqp://h:99999/", "Port out of range"),
        ("amqp://[::1/", "Invalid IPv6 URL"),
        ("amqp:///vhost", "names no host"),
        ("amqp://h:0/", "port 0"),
    ],
)
def test_malformed_broker_url_is_named(url: str, reason: str) -> None:
    """A broker URL the AMQP client could not connect to stops start-up naming broker.address."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"TASK_GATEWAY__BROKER__ADDRESS": f"amqp://ok:5672/,{url}"})

    assert str(caught.value).startswith("broker.address: ")
    assert reason in str(caught.value)


def test_broker_url_error_masks_the_password() -> None:
    """The error about a bad URL shows its user but never its password."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"TASK_GATEWAY__BROKER__ADDRESS": "amqp://app:s3cret@h:99999/"})

    assert "s3cret" not in str(caught.value)
    assert "app:***@h:99999" in str(caught.value)


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    """A file that is not valid TOML stops loading with an error naming the file."""
    with pytest.raises(ConfigError, match=r"gateway\.toml is not valid TOML"):
        load_file(tmp_path, "[grpc\naddress = 1\n")


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    """A --config path that cannot be read stops loading with an error naming the file."""
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        load_settings(missing, environ={})


def test_routes_from_environment_are_refused() -> None:
    """Routes cannot be set from the environment; the error names the variable."""
    with pytest.raises(ConfigError, match=r"TASK_GATEWAY__ROUTES.*TOML file only"):
        load_settings(environ={"TASK_GATEWAY__ROUTES": "audio.generate"})


def test_route_missing_a_field_is_named(tmp_path: Path) -> None:
    """A [[routes]] entry without service_name names routes[<index>].service_name."""
    with pytest.raises(ConfigError, match=r"missing setting routes\[0\]\.service_name"):
        load_file(tmp_path, '[[routes]]\ntask_type = "a.b"\nexchange = "a"\n')


def test_routes_must_be_tables(tmp_path: Path) -> None:
    """A routes value that is not an array of tables is refused, naming routes."""
    with pytest.raises(ConfigError, match=r"routes: expected a list of tables"):
        load_file(tmp_path, 'routes = "audio.generate"\n')


def test_empty_part_in_variable_name_is_refused() -> None:
    """A variable with an empty part (double separator) is refused, naming the variable."""
    with pytest.raises(ConfigError, match=r"TASK_GATEWAY__BROKER____ADDRESS: empty part"):
        load_settings(environ={"TASK_GATEWAY__BROKER____ADDRESS": "amqp://x/"})


def test_required_auth_without_a_clients_file_is_refused() -> None:
    """auth.mode "required" names auth.clients_file when it is not set."""
    with pytest.raises(
        ConfigError, match=r'auth\.clients_file: needed when auth\.mode is "required"'
    ):
        load_settings(environ={"TASK_GATEWAY__AUTH__MODE": "required"})


@pytest.mark.parametrize(
    "environ",
    [
        {"TASK_GATEWAY__AUTH__CLIENTS_FILE": "/etc/clients.toml"},  # mode left at its default
        {"TASK_GATEWAY__AUTH__MODE": "none", "TASK_GATEWAY__AUTH__CLIENTS_FILE": "clients.toml"},
    ],
)
def test_a_clients_file_without_required_auth_is_refused(environ: dict[str, str]) -> None:
    """A clients file with auth.mode "none" would be ignored, every call let in: a ConfigError
    naming both settings and the two ways out."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)

    message = str(caught.value)
    assert message.startswith('auth.clients_file is set but auth.mode is "none"'), message
    assert 'set auth.mode = "required"' in message
    assert "or unset auth.clients_file" in message


def test_shipped_config_files_load() -> None:
    """config/development.toml, config/production.toml and deploy/k8s/gateway.toml load (none
    sets a clients file without auth.mode "required")."""
    root = Path(__file__).resolve().parents[2]
    for path in ("config/development.toml", "config/production.toml", "deploy/k8s/gateway.toml"):
        settings = load_settings(root / path, environ={})
        assert (settings.auth.mode == "required") == bool(settings.auth.clients_file), path
