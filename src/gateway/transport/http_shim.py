"""The REST shim: grpc-gateway-style JSON transcoding onto the same methods as gRPC.

Routes come from the `google.api.http` annotations (`http_rules`), so an annotated RPC gets
its REST route with no change here. A request body is parsed with protobuf's JSON mapping
(proto and lowerCamel names), path variables are bound to request fields, headers become
call metadata, and the method that serves gRPC answers. Errors are `google.rpc.Status` JSON
with the HTTP status of the one status table (`gateway.errors.STATUS`).

It runs on aiohttp, in the gateway's own process and event loop: a mature asyncio HTTP/1.1
server that shares yarl/multidict with aio-pika and can bind with SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import structlog
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.config import TlsSettings
from gateway.contracts.http_rules import HttpRule
from gateway.contracts.jsonmapping import json_number, parse_json_object
from gateway.core.context import Authenticate, CallContext
from gateway.core.method import Method
from gateway.core.methods import Methods
from gateway.core.middleware import call_fields
from gateway.core.status import to_status_proto
from gateway.errors import (
    HTTP_ONLY_STATUS,
    Code,
    ConfigError,
    FieldViolation,
    GatewayError,
    invalid_argument,
)
from gateway.transport import metrics
from gateway.transport.tls import CertificateFiles, HttpTls, peer_identity_from_certificate

__all__ = ["HttpShim"]


def _swagger_ui_assets() -> Path:
    """Swagger UI's files as the swagger-ui-py package ships them.

    Found without importing the package, whose modules load PyYAML and jinja2: 3 MB in every
    worker for nothing the shim uses (it only serves the files).
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


log = structlog.get_logger(logger_name="gateway.http")

# Returns None when ready, else why not.
Readiness = Callable[[], Awaitable[str | None]]

_FORWARDED_HEADERS = frozenset({"authorization", "x-request-id", "traceparent", "tracestate"})
_METADATA_PREFIX = "grpc-metadata-"
# gRPC's timeout header: up to 8 digits and a unit (Hours, Minutes, Seconds, milli, micro, nano).
_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

# What aiohttp reads before a handler runs: a request or header line, and headers.
_MAX_LINE_BYTES = 8190
_MAX_HEADERS = 128
_TOO_MANY_CONNECTIONS_BODY = json.dumps(
    {
        "code": 14,
        "message": "this gateway worker has too many open connections (server.max_connections); "
        "retry on a new connection",
        "details": [],
    }
).encode()
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_TOO_MANY_CONNECTIONS_BODY)
) + _TOO_MANY_CONNECTIONS_BODY

# Bodies larger than this are parsed in a thread, so that the event loop goes on serving.
_LARGE_BODY_BYTES = 64 * 1024

# The gateway's own GET routes (registered on the router ahead of the RPC routes).
_OWN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
# OpenTelemetry's http.request.method: the known methods, and _OTHER for anything else, so
# that a client cannot make up label values.
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Task Gateway API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    // validatorUrl null: Swagger UI would otherwise send the document to an online validator.
    window.ui = SwaggerUIBundle({
      url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null
    });
  </script>
</body>
</html>
"""


class HttpShim:
    def __init__(
        self,
        methods: Methods,
        rules: Sequence[HttpRule],
        *,
        openapi: Mapping[str, Any],
        readiness: Readiness,
        max_request_bytes: int,
        tls: TlsSettings | None = None,
        authenticate: Authenticate | None = None,
    ) -> None:
        self._routes = [(rule, methods[_wire_name(rule)]) for rule in rules]
        # Who the caller is, asked before its body is read (auth.mode = "required"): a client
        # that is not let in costs no read and no parse of up to max_request_bytes. The
        # methods' own authentication then keeps the client found here (Auth.authenticate).
        self._authenticate = authenticate
        self._openapi = json.dumps(openapi, ensure_ascii=False).encode()
        self._readiness = readiness
        self._max_request_bytes = max_request_bytes
        # Read here, so that unreadable files stop start-up naming the setting.
        self._tls = HttpTls(CertificateFiles("server.tls", tls)) if tls and tls.enabled else None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._admin: web.AppRunner | None = None
        # Seconds a request's body has to arrive in, from its headers (set by `start`).
        self._body_timeout: float | None = None

    async def start(
        self,
        address: str,
        *,
        reuse_port: bool,
        answer_grace: float,
        max_connections: int,
        keepalive_timeout: float,
    ) -> int:
        """Listen on `address` (host:port); the port (the one the system chose for port 0).

        At most `max_connections` client connections at once: one more is answered 503 and
        closed. On stop, handlers still running get `answer_grace` seconds to answer.

        `keepalive_timeout` bounds every wait on the client: an idle connection, a request's
        headers (aiohttp's keep-alive timer runs until they are complete) and, here, its body,
        which must have arrived that long after the headers, else 408 and the connection is
        closed (once aiohttp's lingering close, at most 10 s, has drained what still comes).
        So a client that sends a byte now and then cannot hold one of `max_connections` for
        ever.
        """
        self._body_timeout = keepalive_timeout
        host, _, port = address.rpartition(":")
        self._runner = web.AppRunner(
            self.application(),
            access_log=None,  # every request is logged once, by the gateway itself
            shutdown_timeout=answer_grace,
            keepalive_timeout=keepalive_timeout,
            # aiohttp's own bounds on what it parses before a handler runs, stated here.
            max_line_size=_MAX_LINE_BYTES,
            max_field_size=_MAX_LINE_BYTES,
            max_headers=_MAX_HEADERS,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None  # set up just above

        def connection() -> asyncio.BaseProtocol:
            if len(server.connections) >= max_connections:
                return _TooManyConnections()
            return server()

        try:
            self._listener = await asyncio.get_running_loop().create_server(
                connection,
                host.strip("[]") or None,
                int(port),
                ssl=self._tls.context if self._tls is not None else None,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
        except OSError as exc:
            reason = exc.strerror
            raise ConfigError(f"server.address: cannot listen on {address}: {reason}") from exc
        if self._tls is not None:
            self._tls.start()
        return int(self._listener.sockets[0].getsockname()[1])

    async def start_admin(self, address: str, *, reuse_port: bool, keepalive_timeout: float) -> int:
        """The admin listener: plaintext /healthz, /readyz and /metrics only; its port.

        Its connections are closed idle after `keepalive_timeout` too: aiohttp's default is an
        hour, for anyone who can reach the port and never finishes a request.
        """
        app = web.Application(middlewares=[_measured])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._admin = web.AppRunner(
            app, access_log=None, shutdown_timeout=0, keepalive_timeout=keepalive_timeout
        )
        await self._admin.setup()
        host, _, port = address.rpartition(":")
        site = web.TCPSite(self._admin, host.strip("[]"), int(port), reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            reason = exc.strerror
            raise ConfigError(f"admin.address: cannot listen on {address}: {reason}") from exc
        return int(self._admin.addresses[0][1])

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections; those open get the answer grace
        if self._tls is not None:
            await self._tls.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admin is not None:
            await self._admin.cleanup()

    def application(self) -> web.Application:
        # Bodies are read by `_body`, which answers 413 itself, in Status JSON.
        app = web.Application(client_max_size=self._max_request_bytes, middlewares=[_measured])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi_json)
        app.router.add_get("/docs", self._docs)
        app.router.add_static("/docs/static", _swagger_ui_assets())
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = await self._readiness()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        # Off the loop: it reads every worker's metric files.
        body = await asyncio.to_thread(metrics.scrape)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _docs(self, request: web.Request) -> web.Response:
        return web.Response(text=_DOCS_PAGE, content_type="text/html")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._call(request)
        except GatewayError as error:
            return _error_response(error)
        except Exception:
            log.exception(
                "unexpected error in the HTTP shim", path=request.path, **_log_fields(request)
            )
            return _error_response(
                GatewayError(Code.INTERNAL, "internal error; see the gateway's log")
            )

    async def _call(self, request: web.Request) -> web.StreamResponse:
        try:
            method, message, context = await self._transcode(request)
        except GatewayError as error:
            # Rejected before any method ran; methods log their own outcome.
            log.info(
                "http request rejected",
                method=request.method,
                path=request.rel_url.raw_path[:256],
                code=error.code.name,
                error=error.message,
                **_log_fields(request),
            )
            raise
        response = await method.handler(message, context)
        if response.ByteSize() > _LARGE_BODY_BYTES // 4:  # its JSON is several times larger
            body = await asyncio.to_thread(_to_json, response)  # a batch's thousand results
        else:
            body = _to_json(response)
        return web.Response(body=body, content_type="application/json")

    async def _transcode(self, request: web.Request) -> tuple[Method, Message, CallContext]:
        """The method a request routes to, its request message, and its call context."""
        rule, method, variables = self._route(request)
        timeout = _timeout(request)  # a malformed header is refused before the body is read
        transport = request.transport
        # The call starts before its body is read, and Grpc-Timeout counts from here, as a
        # gRPC deadline counts from the call's start: the time the body takes to arrive and to
        # parse is the client's too.
        context = CallContext.start(
            "http",
            method=method.full_name,
            peer=request.remote or "",
            timeout=timeout,
            metadata=_metadata(request),
            peer_identity=peer_identity_from_certificate(
                transport.get_extra_info("peercert") if transport is not None else None
            ),
        )
        if self._authenticate is not None:
            self._authenticate(context)  # UNAUTHENTICATED (401) before the body is read
        raw = await self._body(request) if rule.body else b""
        if len(raw) > _LARGE_BODY_BYTES:
            # Off the event loop, parsing and the freeing of what was parsed alike: a 1 MB
            # batch takes tens of ms, and the loop's other calls and probes must not wait.
            message = await asyncio.to_thread(_request_message_freed, rule, method, raw, variables)
        else:
            message = _request_message(rule, method, raw, variables)
        # The deadline may be past already: the method then answers DEADLINE_EXCEEDED,
        # publishing nothing.
        return method, message, context

    def _route(self, request: web.Request) -> tuple[HttpRule, Method, dict[str, str]]:
        path = request.rel_url.raw_path
        allowed = ["GET", "HEAD"] if path in _OWN_PATHS else []
        for rule, method in self._routes:
            variables = rule.match(path)
            if variables is None:
                continue
            if rule.verb == request.method:
                request[_ROUTE] = rule.path  # the template, for the request's metrics
                return rule, method, variables
            allowed.append(rule.verb)
        if allowed:
            raise _HttpError(
                405,
                f"method {request.method} is not allowed on {path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        raise _HttpError(404, f"no route for {request.method} {path}")

    async def _body(self, request: web.Request) -> bytes:
        """The request's body, once its media type and size are checked.

        Bounded in time (see `start`): nothing else frees a connection whose client sends its
        body a byte now and then. With auth.mode = "required" the caller was authenticated
        from its headers before this (`_transcode`).
        """
        media_type = request.content_type
        if media_type != "application/json" and not media_type.endswith("+json"):
            sent = request.headers.get("Content-Type", "none")
            raise _HttpError(415, f"Content-Type must be application/json, got {sent!r}")
        length = request.content_length
        if length is not None and length > self._max_request_bytes:
            raise _too_large(length, self._max_request_bytes)
        try:
            async with asyncio.timeout(self._body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body, with no Content-Length
            raise _too_large(None, self._max_request_bytes) from None
        except TimeoutError:
            raise _HttpError(
                408,
                f"the request body had not all arrived {self._body_timeout:g} s after its "
                "headers (server.keepalive_timeout_seconds); nothing was published",
                close=True,  # the rest of the body may still come: the connection is done
            ) from None
        except ConnectionError:  # reset, aborted; aiohttp's ClientConnectionResetError too
            # The client closed or reset its connection while sending: its doing, routine
            # (CANCELLED, 499, logged at info), and there is no one left to answer.
            raise GatewayError(
                Code.CANCELLED,
                "the client closed the connection before its request body had arrived; "
                "nothing was published",
            ) from None


def _request_message_freed(
    rule: HttpRule, method: Method, raw: bytes, variables: Mapping[str, str]
) -> Message:
    """`_request_message`, in a thread: an error leaves with no traceback, so that the parsed
    body its frames hold (a million JSON values, maybe) is freed here, not in the event loop."""
    try:
        return _request_message(rule, method, raw, variables)
    except GatewayError as error:
        raise error.with_traceback(None) from None


def _request_message(
    rule: HttpRule, method: Method, raw: bytes, variables: Mapping[str, str]
) -> Message:
    """The request message of a call: the JSON body and the path variables, parsed and checked."""
    fields: dict[str, Any] = {}
    if rule.body:
        body = _parse_json(raw)
        if rule.body == "*" and not isinstance(body, dict):
            raise invalid_argument(
                [FieldViolation("body", "must be a JSON object, got " + type(body).__name__)]
            )
        fields = body if rule.body == "*" else {rule.body: body}
    for name, value in variables.items():
        _set_path(fields, name, value)
    # Refused before the entries are parsed into protobuf: they may be hundreds of thousands.
    method.check_limits({k: len(v) for k, v in fields.items() if isinstance(v, list)})
    message = method.request_type()
    violations = parse_json_object(fields, message)
    if violations:
        raise invalid_argument(violations)
    return message


_ROUTE = web.RequestKey("route", str)


@web.middleware
async def _measured(request: web.Request, handler: Any) -> web.StreamResponse:
    """http_server_request_duration_seconds of every request, by its route's template."""
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.get(_ROUTE) or _own_route(request)
        method = request.method if request.method in _KNOWN_METHODS else "_OTHER"
        metrics.HTTP_DURATION.labels(method, route, str(status)).observe(
            time.perf_counter() - started
        )


def _own_route(request: web.Request) -> str:
    """The template of one of the shim's own routes, or _unmatched."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    return canonical if canonical and "{path" not in canonical else metrics.UNMATCHED_ROUTE


class _TooManyConnections(asyncio.Protocol):
    """A connection over server.max_connections: answered 503 at once and closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport writes, but not always as an asyncio.WriteTransport:
        # uvloop's (the production loop's) are classes of its own.
        stream = cast(asyncio.Transport, transport)
        stream.write(_TOO_MANY_CONNECTIONS)
        stream.close()


class _HttpError(GatewayError):
    """An error of the HTTP layer itself (routing, media type, size, time) with its own HTTP
    status."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        """`close`: answer with Connection: close, and take no further request on it."""
        super().__init__(HTTP_ONLY_STATUS[status][0], message)
        self.status = status
        self.headers = dict(headers or {})
        self.close = close


def _too_large(size: int | None, limit: int) -> _HttpError:
    got = f"{size} bytes" if size is not None else "more"
    return _HttpError(
        413,
        f"request body is {got}, over the limit of {limit} bytes (grpc.max_request_bytes)",
    )


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of duplicate keys; a request that has them is ambiguous."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(raw: bytes) -> Any:
    def bad(description: str) -> GatewayError:
        return invalid_argument([FieldViolation("body", description)])

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"malformed JSON: not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno} (character {exc.pos})"
        raise bad(f"malformed JSON at {where}: {exc.msg}") from None
    except RecursionError:
        raise bad("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # a duplicate key, NaN or Infinity
        raise bad(f"malformed JSON: {exc}") from None


def _set_path(fields: dict[str, Any], dotted: str, value: str) -> None:
    *parents, leaf = dotted.split(".")
    node = fields
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[leaf] = value


def _log_fields(request: web.Request) -> dict[str, str]:
    """The log context of a request that never reached a method (LogContext binds it there)."""
    peer = request.remote or ""
    return call_fields(
        CallContext.start("http", method="", peer=peer, timeout=None, metadata=_metadata(request))
    )


def _metadata(request: web.Request) -> dict[str, str]:
    metadata = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower.startswith(_METADATA_PREFIX):
            metadata[lower[len(_METADATA_PREFIX) :]] = value
        elif lower in _FORWARDED_HEADERS:
            metadata[lower] = value
    return metadata


def _timeout(request: web.Request) -> float | None:
    header = request.headers.get("Grpc-Timeout")
    if header is None:
        return None
    match = _GRPC_TIMEOUT.match(header.strip())
    if match is None:
        raise invalid_argument(
            [
                FieldViolation(
                    "Grpc-Timeout",
                    f"{header!r} is not a gRPC timeout (1 to 8 digits and a unit of H M S m u n)",
                )
            ]
        )
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def _to_json(message: Message) -> bytes:
    # Fields at their default are written too (grpc-gateway's EmitUnpopulated), so that a
    # batch result with index 0 still says so and every answer has the same shape.
    body = _integral_floats_as_ints(
        json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    )
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _integral_floats_as_ints(value: Any) -> Any:
    """Struct numbers are doubles; `256.0` in a JSON Schema reads better as `256`."""
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def _error_response(error: GatewayError) -> web.Response:
    status = error.status if isinstance(error, _HttpError) else error.code.row.http_status
    body = json_format.MessageToDict(to_status_proto(error), preserving_proto_field_name=True)
    body.setdefault("details", [])
    headers = dict(error.headers) if isinstance(error, _HttpError) else {}
    if error.retry_after is not None:  # whole seconds, at least 1 (RFC 9110)
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if error.code is Code.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    response = web.Response(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers or None,
    )
    if isinstance(error, _HttpError) and error.close:
        response.force_close()
    return response


def _wire_name(rule: HttpRule) -> str:
    return f"/{rule.method.containing_service.full_name}/{rule.method.name}"
