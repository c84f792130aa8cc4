"""When to try a task again, and what to tell the caller when the retries are over.

Every attempt of one task sends the same idempotency key, so the gateway derives the same
task id each time: a retry after an unknown outcome never makes a second task. Free of I/O, so
the sync client, the asyncio client and both publishers share it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from task_gateway_client._errors import Failure, OutcomeUnknown, TaskGatewayError

__all__ = ["Attempts", "RetryPolicy"]

# Worth another attempt after a backoff: the gateway, its broker, or the path to them is away
# for a moment. RESOURCE_EXHAUSTED is retried only when the server said when (RetryInfo).
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, within the call's deadline.

    Before retry n (counted from 0) the client waits a random time between 0 and
    `min(max_backoff, initial_backoff * multiplier**n)` seconds, as gRPC's own retry design
    does, so that many clients failing at once do not come back at once.
    """

    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    # Attempts in all, the first one included; 1 turns retries off.
    max_attempts: int = 6

    def __post_init__(self) -> None:
        for name in ("initial_backoff", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"retry.{name} must be positive, got {getattr(self, name)!r}")
        if not self.multiplier >= 1:
            raise ValueError(f"retry.multiplier must be at least 1, got {self.multiplier!r}")
        if self.max_attempts < 1:
            raise ValueError(f"retry.max_attempts must be at least 1, got {self.max_attempts!r}")

    def backoff(self, retry: int, jitter: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry).

        `jitter` (in [0, 1)) is the random fraction of the ceiling to wait, drawn here when
        not given: tasks that failed together share one, and so go again together.
        """
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return ceiling * (random.random() if jitter is None else jitter)


class Attempts:
    """The attempts of one task: how long the next may take, whether to wait and try again.

    `deadline` is time.monotonic() at the caller's overall deadline; each attempt gets what
    remains of it.
    """

    def __init__(self, policy: RetryPolicy, deadline: float, idempotency_key: str) -> None:
        self._policy = policy
        self.deadline = deadline
        self.idempotency_key = idempotency_key
        self.count = 0
        self._last: TaskGatewayError | None = None
        # Whether some attempt may have published the task: then the end is OutcomeUnknown.
        self._unknown = False

    def timeout(self, now: float) -> float | None:
        """Seconds the next attempt may take, or None when the deadline has passed."""
        remaining = self.deadline - now
        return remaining if remaining > 0 else None

    def failed(self, failure: Failure, now: float, jitter: float | None = None) -> float | None:
        """Record a failed attempt; seconds to wait before the next, or None to give up."""
        self.count += 1
        self._last = failure.error
        self._unknown = self._unknown or failure.outcome_unknown
        error = failure.error
        if error.code in _TRANSIENT:
            delay = self._policy.backoff(self.count - 1, jitter)
        elif error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None:
            delay = error.retry_delay
        else:
            return None
        if self.count >= self._policy.max_attempts or now + delay >= self.deadline:
            return None
        return delay

    def final_error(self) -> TaskGatewayError:
        """What the caller hears once no further attempt is made."""
        last = self._last
        if last is None:  # the deadline passed before the first attempt could be made
            last = TaskGatewayError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the deadline passed before the task could be sent; it was not published",
            )
        if not self._unknown:
            return last
        unknown = OutcomeUnknown(
            last.code,
            f"{last.message} [after {self.count} attempt(s) the outcome is unknown: retry with "
            f"idempotency_key {self.idempotency_key!r} to avoid a duplicate]",
            last.violations,
            idempotency_key=self.idempotency_key,
        )
        unknown.__cause__ = last
        return unknown
