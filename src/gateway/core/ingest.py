"""The one implementation behind every transport: check a task, publish it, wait for the confirm.

gRPC (typed RPCs, Publish, batches and streams) and the REST shim all go through
`Ingestor.publish`, so validation, limits and the one log line per task are the same whatever
the client spoke. `Ingestor.submit` waits for one task; `gateway.core.window` for many at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.broker import Broker, Envelope
from gateway.contracts import validation
from gateway.contracts.jsonmapping import parse_json_object
from gateway.contracts.routing import Route, RouteTable
from gateway.core import tasks
from gateway.core.context import CallContext
from gateway.core.metrics import IN_FLIGHT, IN_FLIGHT_LIMIT
from gateway.core.middleware import Middleware, Outcome, visibility
from gateway.errors import Code, FieldViolation, GatewayError, invalid_argument

__all__ = ["UNKNOWN_TASK_TYPE", "Accepted", "Ingestor", "Publication", "TaskRequest"]

# The task type of a task the gateway does not route, in metrics and the task hooks: never
# the string a client sent.
UNKNOWN_TASK_TYPE = "_unknown"

log = structlog.get_logger(logger_name="gateway.ingest")

# Task types as clients sent them are logged; keep a hostile one from flooding the log.
_LOGGED_TASK_TYPE_LENGTH = 128

# No broker confirms a message in less: a call with less time left is refused before anything
# is sent, rather than published and then answered "outcome unknown", which invites a retry.
_LEAST_TIME_TO_CONFIRM = 0.001


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


class Publication:
    """One task from its arrival to its outcome, which is logged (and told the middlewares) once.

    `confirm` is done when the broker confirmed the task or refused it; for a task that was
    never sent (invalid, over a limit) it is done from the start, with the error.
    """

    __slots__ = ("_accepted", "_call", "_fields", "_hooks", "_started", "_task_type", "confirm")

    def __init__(
        self,
        confirm: asyncio.Future[None],
        accepted: Accepted | None,
        started: float,
        fields: dict[str, Any],
        call: CallContext,
        hooks: _TaskHooks,
    ) -> None:
        self.confirm = confirm
        self._accepted = accepted
        self._started = started
        self._fields = fields
        self._call = call
        self._hooks = hooks
        self._task_type = accepted.route.task_type if accepted is not None else UNKNOWN_TASK_TYPE

    def settle(self, error: GatewayError | None = None) -> Accepted | GatewayError:
        """The outcome, logged: `error` when given (the caller stopped waiting), else the confirm's.

        Call it once, when `confirm` is done or with an error.
        """
        if error is None:
            error = _confirm_error(self.confirm, self._fields)
        if error is None and self._accepted is not None:
            self._ended(Code.OK)
            return self._accepted
        assert error is not None
        self._ended(error.code, error=error.message)
        return error

    def cancelled(self) -> None:
        """Log that the client went away before the outcome was known (instead of settle)."""
        self._ended(Code.CANCELLED, error="the client cancelled the call")

    def _ended(self, code: Code, **extra: Any) -> None:
        _log_outcome(self._started, self._fields, code, **extra)
        for settled in self._hooks.settled:
            settled(self._call, self._task_type, code)


class Ingestor:
    def __init__(
        self,
        routes: RouteTable,
        broker: Broker,
        *,
        app_id: str,
        publish_timeout: float,
        max_in_flight: int,
        middlewares: Sequence[Middleware] = (),
    ) -> None:
        """`middlewares`: those whose task hooks (admit, publishing, settled) see every task."""
        self.routes = routes
        self.broker = broker
        self._hooks = _TaskHooks(middlewares)
        self._visible = visibility(middlewares)
        self._app_id = app_id
        self._publish_timeout = publish_timeout
        self._max_in_flight = max_in_flight
        IN_FLIGHT_LIMIT.set(max_in_flight)
        # Publishes waiting for their confirm, by task id. A concurrent retry of the same
        # idempotent task joins the publish in flight instead of sending a second copy: aiormq
        # matches a returned message to its publish by message_id (= task id), so two copies
        # in flight on one channel could be confused, and one would then read as confirmed.
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._closed = False
        self._running_loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def close(self) -> None:
        """Refuse new tasks from now on (shutdown); publishes already under way go on."""
        self._closed = True

    def time_limit(self, remaining: float | None) -> float:
        """How long to wait for a confirm: the caller's remaining deadline, within the cap."""
        return self._publish_timeout if remaining is None else min(remaining, self._publish_timeout)

    async def submit(self, request: TaskRequest, context: CallContext) -> Accepted:
        """Publish one task; return once the broker confirmed it, or raise GatewayError.

        The wait is bounded by the call's deadline and by the configured cap. Logs the
        outcome once.
        """
        publication = self.publish(request, context)
        limit = self.time_limit(context.remaining())
        confirm = publication.confirm
        if not confirm.done():
            # Woken by the confirm or by the time limit, whichever comes first; the publish
            # itself is never cancelled: a deadline or a cancelled call must not cut it off
            # half-way inside the AMQP client. It finishes in the background, in `in_flight`.
            # (What asyncio.wait does, without its generality on the hot path.)
            loop = confirm.get_loop()  # asyncio.get_running_loop() asks the kernel for the pid
            woken = loop.create_future()

            def wake(_: object = None) -> None:
                if not woken.done():
                    woken.set_result(None)

            confirm.add_done_callback(wake)
            timer = loop.call_later(limit, wake)
            try:
                await woken
            except asyncio.CancelledError:
                publication.cancelled()
                raise
            finally:
                timer.cancel()
                confirm.remove_done_callback(wake)
        outcome = publication.settle(None if confirm.done() else deadline_exceeded(limit))
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    def publish(self, request: TaskRequest, context: CallContext) -> Publication:
        """Check the task and start publishing it. Never raises: an error is the outcome."""
        started = time.perf_counter()
        fields: dict[str, Any] = {"task_type": request.task_type[:_LOGGED_TASK_TYPE_LENGTH]}
        accepted = None
        try:
            if self._closed:
                raise GatewayError(
                    Code.UNAVAILABLE, "the gateway is shutting down; retry on another instance"
                )
            route, envelope, task_key = self._prepare(request, context)
            accepted = Accepted(task_key, envelope.message_id, route)
            fields.update(task_key=task_key, exchange=envelope.exchange)
            remaining = context.remaining()
            if remaining is not None and remaining < _LEAST_TIME_TO_CONFIRM:
                raise GatewayError(
                    Code.DEADLINE_EXCEEDED,
                    "the call's deadline passed before the task could be sent: nothing was "
                    "published; retry with a longer deadline",
                )
            # A retry of a task in flight joins its publish; only a new one needs room.
            joined = self._in_flight.get(envelope.message_id)
            if joined is None and len(self._in_flight) >= self._max_in_flight:
                raise GatewayError(
                    Code.RESOURCE_EXHAUSTED,
                    f"{self._max_in_flight} publishes are already waiting for the broker "
                    "(broker.max_in_flight); retry later",
                )
            # Last, once nothing else can refuse the task: a quota token is spent only on a
            # task that is sent.
            for admit in self._hooks.admit:
                admit(context, route, request.user_id)
            confirm = joined if joined is not None else self._start(context, route, envelope)
        except Exception as exc:  # a GatewayError, or a bug that settle reports as one
            confirm = asyncio.get_running_loop().create_future()
            confirm.set_exception(exc)
        return Publication(confirm, accepted, started, fields, context, self._hooks)

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for the publishes in flight; return how many did not finish."""
        pending = list(self._in_flight.values())
        if not pending:
            return 0
        _, still_pending = await asyncio.wait(pending, timeout=timeout)
        return len(still_pending)

    def _prepare(self, request: TaskRequest, call: CallContext) -> tuple[Route, Envelope, str]:
        """The task's route, its message, and its task key; INVALID_ARGUMENT for a bad task."""
        visible = self._visible
        route = self.routes.get(request.task_type)
        if route is None:
            shown = None if visible is None else lambda t: visible(call, t)
            raise self.routes.unknown(request.task_type, shown)
        violations = validation.check_user_id(request.user_id)
        violations += validation.check_idempotency_key(request.idempotency_key)
        payload, payload_violations = _render_payload(route, request.payload)
        violations += payload_violations
        if violations:
            raise invalid_argument(violations)
        task_id = tasks.new_task_id(request.user_id, route.task_type, request.idempotency_key)
        task_key = tasks.task_key(request.user_id, route.service_name, task_id)
        headers = {"task_key": task_key}
        if call.trace is not None:  # forwarded as it came, unless a tracing middleware spans it
            headers["traceparent"] = call.trace.traceparent
            if call.trace.tracestate:
                headers["tracestate"] = call.trace.tracestate
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
        return route, envelope, task_key

    def _start(self, call: CallContext, route: Route, envelope: Envelope) -> asyncio.Future[None]:
        """Start publishing the task, in flight until the broker answers."""
        task_id = envelope.message_id
        headers = cast(dict[str, str], envelope.headers)  # built by _prepare, still its own
        outcomes = [
            outcome
            for publishing in self._hooks.publishing
            if (outcome := publishing(call, route, task_id, headers)) is not None
        ]
        # On the loop the call runs on; asyncio.ensure_future would look the loop up with a
        # getpid() system call (Python 3.11's fork check), a cost on every task.
        publish = self._loop().create_task(self.broker.publish(envelope))
        self._in_flight[task_id] = publish
        IN_FLIGHT.inc()
        publish.add_done_callback(lambda done: self._forget(task_id, done, outcomes))
        return publish

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this ingestor publishes on: the one it was first used on."""
        if self._running_loop is None:
            self._running_loop = asyncio.get_running_loop()
        return self._running_loop

    def _forget(
        self, task_id: str, done: asyncio.Future[None], outcomes: Sequence[Outcome]
    ) -> None:
        if self._in_flight.get(task_id) is done:
            del self._in_flight[task_id]
        IN_FLIGHT.dec()
        if done.cancelled():  # only as the event loop itself goes away
            code = Code.UNAVAILABLE
        else:
            error = done.exception()  # retrieved here: a caller that timed out never reads it
            code = error.code if isinstance(error, GatewayError) else Code.INTERNAL
            code = Code.OK if error is None else code
        for outcome in outcomes:
            outcome(code)


class _TaskHooks:
    """The task hooks of the middlewares that have something to do at each."""

    __slots__ = ("admit", "publishing", "settled")

    def __init__(self, middlewares: Sequence[Middleware]) -> None:
        self.admit = [m.admit for m in middlewares if m.overrides("admit")]
        self.publishing = [m.publishing for m in middlewares if m.overrides("publishing")]
        self.settled = [m.settled for m in middlewares if m.overrides("settled")]


def deadline_exceeded(limit: float) -> GatewayError:
    return GatewayError(
        Code.DEADLINE_EXCEEDED,
        f"no confirm from the broker within {round(limit, 2):g}s: the outcome is unknown; "
        "retry with the same idempotency_key to avoid a duplicate",
    )


def _confirm_error(confirm: asyncio.Future[None], fields: dict[str, Any]) -> GatewayError | None:
    """What a done confirm says went wrong, as the client should hear it; None when confirmed."""
    if confirm.cancelled():  # only when the event loop itself is going away
        return GatewayError(
            Code.UNAVAILABLE,
            "the publish was cut off as the gateway stopped: the outcome is unknown; "
            "retry with the same idempotency_key to avoid a duplicate",
        )
    exc = confirm.exception()
    if exc is None or isinstance(exc, GatewayError):
        return exc
    # Anything else is a bug: log it whole, tell the client nothing of it.
    log.error("unexpected error while publishing", exc_info=exc, **fields)
    return GatewayError(Code.INTERNAL, "internal error; see the gateway's log")


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


def _log_outcome(started: float, fields: dict[str, Any], code: Code, **extra: Any) -> None:
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    getattr(log, code.row.log_level)(
        "task published" if code is Code.OK else "task not published",
        code=code.name,
        latency_ms=latency_ms,
        **fields,
        **extra,
    )
