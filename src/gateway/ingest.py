"""The one implementation behind every transport: check a task, publish it, wait for the confirm.

gRPC (typed RPCs and Publish) and the REST shim both call `Ingestor.submit`, so validation,
limits and the one log line per request are the same whatever the client spoke.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway import tasks, validation
from gateway.broker import Broker, Envelope
from gateway.errors import Code, FieldViolation, GatewayError, invalid_argument
from gateway.jsonmapping import parse_json_object
from gateway.routing import Route, RouteTable

__all__ = ["Accepted", "Ingestor", "TaskRequest"]

log = structlog.get_logger(logger_name="gateway.ingest")

# Task types as clients sent them are logged; keep a hostile one from flooding the log.
_LOGGED_TASK_TYPE_LENGTH = 128


@dataclass(frozen=True)
class TaskRequest:
    """A task as a transport received it."""

    user_id: str
    task_type: str
    # A typed payload message, a JSON object (the generic Publish), or None when absent.
    payload: Message | Mapping[str, Any] | None
    idempotency_key: str = ""


@dataclass(frozen=True)
class Accepted:
    """A task the broker confirmed."""

    task_key: str
    task_id: str
    route: Route


@dataclass(frozen=True)
class _Prepared:
    route: Route
    task_id: str
    task_key: str
    envelope: Envelope


class Ingestor:
    def __init__(
        self,
        routes: RouteTable,
        broker: Broker,
        *,
        app_id: str,
        publish_timeout: float,
        max_in_flight: int,
    ) -> None:
        self.routes = routes
        self.broker = broker
        self._app_id = app_id
        self._publish_timeout = publish_timeout
        self._max_in_flight = max_in_flight
        # Publishes waiting for their confirm, by task id. A concurrent retry of the same
        # idempotent task joins the publish in flight instead of sending a second copy: aiormq
        # matches a returned message to its publish by message_id (= task id), so two copies
        # in flight on one channel could be confused, and one would then read as confirmed.
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def close(self) -> None:
        """Refuse new tasks from now on (shutdown); publishes already under way go on."""
        self._closed = True

    async def submit(
        self,
        request: TaskRequest,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
    ) -> Accepted:
        """Publish one task; return once the broker confirmed it, or raise GatewayError.

        `timeout` is the caller's remaining deadline in seconds; the publish is also bounded by
        the configured cap. Logs the outcome once.
        """
        started = time.perf_counter()
        fields: dict[str, Any] = {"task_type": request.task_type[:_LOGGED_TASK_TYPE_LENGTH]}
        try:
            if self._closed:
                raise GatewayError(
                    Code.UNAVAILABLE, "the gateway is shutting down; retry on another instance"
                )
            prepared = self._prepare(request, traceparent)
            fields.update(task_key=prepared.task_key, exchange=prepared.route.exchange)
            await self._publish(prepared, timeout)
        except GatewayError as error:
            _log_outcome(started, fields, error.code, error=error.message)
            raise
        except asyncio.CancelledError:
            _log_outcome(started, fields, Code.CANCELLED, error="the client cancelled the call")
            raise
        except Exception as exc:  # anything else is a bug: log it whole, tell the client nothing
            log.exception("unexpected error while publishing", **fields)
            _log_outcome(started, fields, Code.INTERNAL, error=type(exc).__name__)
            raise GatewayError(Code.INTERNAL, "internal error; see the gateway's log") from exc
        _log_outcome(started, fields, Code.OK)
        return Accepted(prepared.task_key, prepared.task_id, prepared.route)

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for the publishes in flight; return how many did not finish."""
        pending = list(self._in_flight.values())
        if not pending:
            return 0
        _, still_pending = await asyncio.wait(pending, timeout=timeout)
        return len(still_pending)

    def _prepare(self, request: TaskRequest, traceparent: str | None) -> _Prepared:
        route = self.routes.resolve(request.task_type)
        violations = validation.check_user_id(request.user_id)
        violations += validation.check_idempotency_key(request.idempotency_key)
        payload, payload_violations = _render_payload(route, request.payload)
        violations += payload_violations
        if violations:
            raise invalid_argument(violations)
        task_id = tasks.new_task_id(request.user_id, route.task_type, request.idempotency_key)
        task_key = tasks.task_key(request.user_id, route.service_name, task_id)
        headers = {"task_key": task_key}
        if traceparent:
            headers["traceparent"] = traceparent
        try:
            body = tasks.message_body(task_id, request.user_id, route.task_type, payload)
        except ValueError as exc:  # NaN/Infinity, or text that is not Unicode (lone surrogates)
            raise invalid_argument(
                [FieldViolation("payload", f"cannot be sent as JSON: {exc}")]
            ) from None
        envelope = Envelope(
            exchange=route.exchange,
            routing_key=route.routing_key,
            body=body,
            message_id=task_id,
            type=route.task_type,
            timestamp=datetime.now(UTC),
            app_id=self._app_id,
            headers=headers,
        )
        return _Prepared(route, task_id, task_key, envelope)

    async def _publish(self, prepared: _Prepared, timeout: float | None) -> None:
        publish = self._in_flight.get(prepared.task_id)
        if publish is None:
            if len(self._in_flight) >= self._max_in_flight:
                raise GatewayError(
                    Code.RESOURCE_EXHAUSTED,
                    f"{self._max_in_flight} publishes are already waiting for the broker "
                    "(broker.max_in_flight); retry later",
                )
            publish = asyncio.ensure_future(self.broker.publish(prepared.envelope))
            self._in_flight[prepared.task_id] = publish
            publish.add_done_callback(lambda done: self._forget(prepared.task_id, done))
        limit = self._publish_timeout if timeout is None else min(timeout, self._publish_timeout)
        try:
            # Shielded: a deadline or a cancelled call must not cut a publish off half-way
            # inside the AMQP client; it finishes in the background and stays in `in_flight`.
            async with asyncio.timeout(limit):
                await asyncio.shield(publish)
        except TimeoutError:
            raise GatewayError(
                Code.DEADLINE_EXCEEDED,
                f"no confirm from the broker within {limit:.3g}s: the outcome is unknown; "
                "retry with the same idempotency_key to avoid a duplicate",
            ) from None

    def _forget(self, task_id: str, done: asyncio.Future[None]) -> None:
        if self._in_flight.get(task_id) is done:
            del self._in_flight[task_id]
        if not done.cancelled():
            done.exception()  # retrieved here: a caller that timed out never reads it


def _render_payload(
    route: Route, payload: Message | Mapping[str, Any] | None
) -> tuple[Any, list[FieldViolation]]:
    """The payload as it goes into the body, and what is wrong with it.

    Typed payloads render with their proto field names; a JSON payload for a typed task type
    is parsed into that type first, so both paths publish identical bodies. Untyped routes
    forward the JSON object untouched, as the legacy service did.
    """
    if route.payload_type is None:
        if isinstance(payload, Message):  # pragma: no cover - typed RPCs always have a type
            raise TypeError(f"{route.origin} has no payload type")
        return dict(payload or {}), []
    if isinstance(payload, Message):
        message = payload
    else:
        message = route.payload_type()
        violations = parse_json_object(payload or {}, message, "payload")
        if violations:
            return None, violations
    violations = validation.check_payload(message)
    if violations:
        return None, violations
    return json_format.MessageToDict(message, preserving_proto_field_name=True), []


# The client's mistakes are routine (info); the broker's trouble is the operator's (warning).
_LOG_LEVELS = {
    Code.UNAVAILABLE: "warning",
    Code.DEADLINE_EXCEEDED: "warning",
    Code.RESOURCE_EXHAUSTED: "warning",
    Code.INTERNAL: "error",
}


def _log_outcome(started: float, fields: dict[str, Any], code: Code, **extra: Any) -> None:
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    getattr(log, _LOG_LEVELS.get(code, "info"))(
        "task published" if code is Code.OK else "task not published",
        code=code.name,
        latency_ms=latency_ms,
        **fields,
        **extra,
    )
