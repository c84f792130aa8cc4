"""Settings: a TOML file plus `TASK_GATEWAY__SECTION__KEY` environment overrides.

The legacy names are kept: `TASK_GATEWAY__RUN_MODE`, `TASK_GATEWAY__SERVER__ADDRESS` (HTTP)
and `TASK_GATEWAY__BROKER__ADDRESS` (the AMQP URL); everything new follows the same scheme,
e.g. `TASK_GATEWAY__GRPC__ADDRESS`. The file is `--config PATH`, or else
`config/<run_mode>.toml` when it exists. Unknown keys and bad values stop start-up with a
`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "AdminSettings",
    "AuthSettings",
    "BrokerSettings",
    "BrokerTlsSettings",
    "GrpcSettings",
    "HttpSettings",
    "LogSettings",
    "RouteSettings",
    "Settings",
    "TlsSettings",
    "load_settings",
    "redact",
]

ENV_PREFIX = "TASK_GATEWAY__"

_T = typing.TypeVar("_T")


@dataclass(frozen=True)
class TlsSettings:
    """TLS of a listener: `[grpc.tls]`, `[server.tls]`. Empty: plaintext."""

    cert_file: str = ""
    key_file: str = ""
    # When set, clients must present a certificate this CA signed (mutual TLS).
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file or self.client_ca_file)


@dataclass(frozen=True)
class GrpcSettings:
    """The gRPC server."""

    address: str = "0.0.0.0:50051"
    # Requests above this size are refused with RESOURCE_EXHAUSTED before they are parsed.
    max_request_bytes: int = 1024 * 1024
    # How long in-flight publishes may take to finish on SIGTERM/SIGINT.
    shutdown_grace_seconds: float = 10.0
    # Tasks of one batch or stream awaiting their confirm at once; a stream is read no
    # further while its window is full, so a slow broker slows the client down.
    stream_window: int = 256
    # Entries of one PublishBatch; a larger batch is refused (INVALID_ARGUMENT / 400) before
    # anything is published. It bounds the work, and the answer's size, of one call.
    max_batch_entries: int = 1000
    # Calls one worker handles at once (streams included); past it grpc answers
    # RESOURCE_EXHAUSTED at once. Health Watch streams, open to anyone, may hold at most a
    # tenth of it (one at least): one more is RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 1000
    # Calls one client connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    max_concurrent_streams: int = 100
    # A client connection is asked to go away (GOAWAY) after this long, so that long-lived
    # channels reconnect and spread again over the workers sharing the port; calls under way
    # get the grace to finish.
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 30.0
    tls: TlsSettings = field(default_factory=TlsSettings)


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP (REST) server; `[server]` in the file, as the legacy service called it."""

    address: str = "0.0.0.0:10010"
    # Client connections one worker keeps open; past it a new connection is answered 503 and
    # closed.
    max_connections: int = 1000
    # An idle connection (REST and admin) is closed after this long, as is one whose request
    # headers are unfinished by then; a request body not all arrived this long after its
    # headers is answered 408 and the connection closed.
    keepalive_timeout_seconds: float = 15.0
    tls: TlsSettings = field(default_factory=TlsSettings)


@dataclass(frozen=True)
class AdminSettings:
    """A plaintext HTTP listener for /healthz, /readyz and /metrics, whatever TLS the others
    use (kubelet probes and Prometheus); empty: they stay on server.address only."""

    address: str = ""


@dataclass(frozen=True)
class BrokerTlsSettings:
    """TLS to the broker, for amqps:// addresses."""

    # The CA that signed the broker's certificate; empty: the system's CAs.
    ca_file: str = ""
    # A client certificate, for RabbitMQ's EXTERNAL authentication (no password in the URL).
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the gateway: nobody is asked (none), or every call needs a known client."""

    mode: Literal["none", "required"] = "none"
    # The clients: a TOML file of [[clients]] (see config/clients.example.toml); reloaded on
    # SIGHUP and when it changes. Only with mode "required": set with "none", it is an error.
    clients_file: str = ""


@dataclass(frozen=True)
class BrokerSettings:
    """RabbitMQ, or the in-memory broker when `address` is empty."""

    # AMQP URL(s), comma-separated for failover across a cluster; empty = in-memory broker.
    address: str = ""
    # The topology the in-memory broker loads (RabbitMQ loads its own).
    definitions: str = "deploy/rabbitmq/definitions.json"
    heartbeat_seconds: int = 10
    connect_timeout_seconds: float = 5.0
    # Longest wait between reconnection attempts (backoff starts at 0.1 s and doubles).
    reconnect_max_backoff_seconds: float = 5.0
    # Upper bound on one publish, whatever deadline the client sent (or none).
    publish_timeout_seconds: float = 10.0
    # Publishes waiting for their confirm; past it requests get RESOURCE_EXHAUSTED.
    max_in_flight: int = 4096
    # An exchange found missing counts as missing this long without asking the broker again,
    # so a burst of requests (or probes) does not open a channel each; 0: ask every time.
    # Readiness trusts an exchange it found there as long, then asks again: a deleted exchange
    # turns /readyz not ready at the first probe after that.
    missing_exchange_seconds: float = 1.0
    # The AMQP `app_id` property of every message.
    app_id: str = "task-gateway"
    tls: BrokerTlsSettings = field(default_factory=BrokerTlsSettings)


@dataclass(frozen=True)
class LogSettings:
    # "auto": JSON lines when run_mode is production, readable console otherwise.
    format: Literal["auto", "console", "json"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class RouteSettings:
    """A task type without a typed payload: its payload is forwarded untouched."""

    task_type: str
    exchange: str
    service_name: str
    # Empty: the task type, as for typed routes.
    routing_key: str = ""


@dataclass(frozen=True)
class Settings:
    run_mode: str = "development"
    # Gateway processes sharing the ports (SO_REUSEPORT); 0: one per CPU.
    workers: int = 0
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    server: HttpSettings = field(default_factory=HttpSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    log: LogSettings = field(default_factory=LogSettings)
    routes: tuple[RouteSettings, ...] = ()

    @property
    def broker_urls(self) -> tuple[str, ...]:
        return tuple(url.strip() for url in self.broker.address.split(",") if url.strip())

    @property
    def listen_addresses(self) -> tuple[tuple[str, str], ...]:
        """Each listener's setting and host:port: gRPC, HTTP, and the admin one when set."""
        listeners = [("grpc.address", self.grpc.address), ("server.address", self.server.address)]
        if self.admin.address:
            listeners.append(("admin.address", self.admin.address))
        return tuple(listeners)


def load_settings(
    config_path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (given, or `config/<run_mode>.toml` if present), then the environment."""
    environ = os.environ if environ is None else environ
    overrides = _environment_overrides(environ)
    if config_path is None:
        run_mode = overrides["run_mode"].text if "run_mode" in overrides else "development"
        default_path = Path("config") / f"{run_mode}.toml"
        config_path = default_path if default_path.is_file() else None
    raw: dict[str, Any] = {}
    if config_path is not None:
        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_path} is not valid TOML: {exc}") from exc
    _merge(raw, overrides)
    settings = _build(Settings, raw, "")
    _check(settings)
    return settings


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """TASK_GATEWAY__BROKER__ADDRESS=x -> {"broker": {"address": "x"}} (values stay strings)."""
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty part in the name")
        if path[0] == "routes":
            raise ConfigError(f"environment variable {name}: routes are set in the TOML file only")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: {part} is not a section")
        node[path[-1]] = _EnvValue(value, name)
    return tree


@dataclass(frozen=True)
class _EnvValue:
    """A value from the environment: a string to convert, remembering where it came from."""

    text: str
    variable: str


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _build(cls: type[_T], raw: Any, prefix: str) -> _T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(sorted(prefix + name for name in fields))
            where = f" (from {value.variable})" if isinstance(value, _EnvValue) else ""
            raise ConfigError(f"unknown setting {prefix}{key!s}{where} (known: {known})")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = _convert(hints[name], value, prefix + name)
    missing = [
        prefix + f.name
        for f in fields.values()
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing setting {', '.join(missing)}")
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    where = f"{key} (from {value.variable})" if isinstance(value, _EnvValue) else key
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")  # type: ignore[arg-type]
    if origin is tuple:
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of tables ([[{key}]])")
        return tuple(_convert(item, entry, f"{key}[{i}]") for i, entry in enumerate(value))
    if origin is Literal:
        text = value.text if isinstance(value, _EnvValue) else value
        choices = typing.get_args(hint)
        if text not in choices:
            raise ConfigError(f"{where}: {text!r} is not one of {', '.join(map(str, choices))}")
        return text
    if hint is bool:
        return _to_bool(value, where)
    if hint in (int, float, str):
        return _to_scalar(hint, value, where)
    raise ConfigError(f"{where}: unsupported setting type {hint}")  # pragma: no cover


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _EnvValue) and value.text.lower() in (
        "true",
        "1",
        "yes",
        "false",
        "0",
        "no",
    ):
        return value.text.lower() in ("true", "1", "yes")
    raise ConfigError(f"{where}: expected true or false, got {_shown(value)}")


def _to_scalar(kind: type, value: Any, where: str) -> Any:
    if isinstance(value, _EnvValue):
        try:
            return kind(value.text)
        except ValueError:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value.text!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    return repr(value.text) if isinstance(value, _EnvValue) else f"{type(value).__name__} {value!r}"


def _check(settings: Settings) -> None:
    """Range and format checks that the types alone do not catch."""
    for key, address in settings.listen_addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key}: {address!r} is not host:port")
    positive = {
        "grpc.max_request_bytes": settings.grpc.max_request_bytes,
        "grpc.stream_window": settings.grpc.stream_window,
        "grpc.max_batch_entries": settings.grpc.max_batch_entries,
        "grpc.max_concurrent_rpcs": settings.grpc.max_concurrent_rpcs,
        "grpc.max_concurrent_streams": settings.grpc.max_concurrent_streams,
        "grpc.max_connection_age_seconds": settings.grpc.max_connection_age_seconds,
        "server.max_connections": settings.server.max_connections,
        "server.keepalive_timeout_seconds": settings.server.keepalive_timeout_seconds,
        "broker.heartbeat_seconds": settings.broker.heartbeat_seconds,
        "broker.connect_timeout_seconds": settings.broker.connect_timeout_seconds,
        "broker.reconnect_max_backoff_seconds": settings.broker.reconnect_max_backoff_seconds,
        "broker.publish_timeout_seconds": settings.broker.publish_timeout_seconds,
        "broker.max_in_flight": settings.broker.max_in_flight,
    }
    for key, number in positive.items():
        if not number > 0:  # also refuses NaN
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    if settings.workers < 0:
        raise ConfigError(f"workers: must be 0 (one per CPU) or more, got {settings.workers}")
    for key, seconds in (
        ("grpc.shutdown_grace_seconds", settings.grpc.shutdown_grace_seconds),
        ("broker.missing_exchange_seconds", settings.broker.missing_exchange_seconds),
        (
            "grpc.max_connection_age_grace_seconds",
            settings.grpc.max_connection_age_grace_seconds,
        ),
    ):
        if not seconds >= 0:  # also refuses NaN
            raise ConfigError(f"{key}: must not be negative, got {seconds}")
    for url in settings.broker_urls:
        _check_amqp_url(url)
    for key, tls in (("grpc.tls", settings.grpc.tls), ("server.tls", settings.server.tls)):
        if tls.enabled and not (tls.cert_file and tls.key_file):
            raise ConfigError(f"{key}: cert_file and key_file are both needed for TLS")
    broker_tls = settings.broker.tls
    if bool(broker_tls.cert_file) != bool(broker_tls.key_file):
        raise ConfigError("broker.tls: cert_file and key_file go together (a client certificate)")
    if (broker_tls.ca_file or broker_tls.cert_file) and not all(
        url.startswith("amqps://") for url in settings.broker_urls
    ):
        raise ConfigError("broker.tls is set: every broker.address must be an amqps:// URL")
    if settings.auth.mode == "required" and not settings.auth.clients_file:
        raise ConfigError('auth.clients_file: needed when auth.mode is "required"')
    if settings.auth.mode == "none" and settings.auth.clients_file:
        # Refused rather than ignored: whoever set a clients file expects its clients to be
        # checked, and with mode "none" every call would be let in unauthenticated.
        raise ConfigError(
            'auth.clients_file is set but auth.mode is "none", which would ignore it and let '
            'every call in unauthenticated: set auth.mode = "required" to use it, or unset '
            "auth.clients_file (TASK_GATEWAY__AUTH__CLIENTS_FILE=) to run without authentication"
        )


def _check_amqp_url(url: str) -> None:
    """An AMQP URL the client can connect to; the error names broker.address, not the password."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0..65535
    except ValueError as exc:
        raise ConfigError(f"broker.address: {redact(url)!r} is not a URL: {exc}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigError(f"broker.address: {redact(url)!r} is not an amqp:// or amqps:// URL")
    if not parts.hostname:
        raise ConfigError(f"broker.address: {redact(url)!r} names no host")
    if port == 0:
        raise ConfigError(f"broker.address: {redact(url)!r} has port 0")


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for logs and messages; a URL that does not
    parse is redacted too."""
    scheme, separator, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{separator}{user}:***@{location}"
