"""The bench's arithmetic: CPU per task of a row, the Python floors and the verdicts on them."""

from __future__ import annotations

from pathlib import Path

from bench import loadgen, report
from bench.loadgen import LoadResult
from bench.phases import GrpcPhase, PhaseResult, RawPhase
from bench.servers import Gateway


def load(ok: int, cpu: dict[str, float], covers_run: bool) -> LoadResult:
    return LoadResult(
        "h2load", "", ok, 10.0, 1.0, 2.0, (ok, ok), cpu=cpu, cpu_covers_run=covers_run
    )


def row(key: str, cpu_ms: float | None, **fields: object) -> PhaseResult:
    result = PhaseResult(key, key, msgs_per_s=1000.0, cpu_ms_per_task=cpu_ms)
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def unary(key: str = "grpc.typed") -> GrpcPhase:
    return GrpcPhase(key, key, server=Gateway(), floor="grpc")


def test_cpu_per_task_divides_the_windows_server_cpu_by_the_messages_counted_in_the_queue() -> None:
    """A run whose CPU window spans it (h2load, wrk) counts the queue's messages as its tasks."""
    run = load(ok=900, cpu={"server": 150.0, "seconds": 10.0}, covers_run=True)
    # 1.5 cores x 10 s = 15,000 ms over 10,000 messages
    assert unary().cpu_per_task(run, landed=10_000) == (1.5, "server per task")


def test_cpu_per_task_of_a_python_driver_counts_the_tasks_confirmed_in_its_window() -> None:
    """A Python driver's run includes a counted warm-up: its window's tasks are `ok` x k."""
    run = load(ok=500, cpu={"server": 100.0, "seconds": 10.0}, covers_run=False)
    phase = GrpcPhase("grpc.batch", "batch", server=Gateway(), msgs_per_request=10)
    assert phase.cpu_per_task(run, landed=9999) == (2.0, "server per task")


def test_cpu_per_task_of_a_raw_row_is_its_publishers_and_of_a_no_broker_row_per_call() -> None:
    """Raw rows have no server (the publisher's CPU counts); Echo-like rows count calls."""
    run = load(ok=1000, cpu={"server": 0.0, "loadgen": 50.0, "seconds": 10.0}, covers_run=False)
    assert RawPhase("raw.aiormq", "raw").cpu_per_task(run, landed=1200) == (
        5.0,
        "publisher per task",
    )
    echo = GrpcPhase("baseline.echo", "echo", server=Gateway(), msgs_per_request=0)
    assert echo.cpu_per_task(run, landed=0) == (0.0, "server per call")


def test_the_grpc_floor_is_echos_cpu_per_call_plus_raw_aiormqs_per_message() -> None:
    """The gRPC floor adds the two rows' CPU per task; the REST floor names its missing row."""
    results = {
        "baseline.echo": row("baseline.echo", 0.15),
        "raw.aiormq": row("raw.aiormq", 0.10),
    }
    floors = report.floors(results)
    assert floors["grpc"]["ms_per_task"] == 0.25
    assert floors["rest"] == {"missing": ["floor.rest"]}


def test_a_row_over_115_percent_of_its_floor_misses_and_one_under_meets_the_target() -> None:
    """The CPU verdict compares the row's CPU per task with 1.15x its floor."""
    results = {
        "baseline.echo": row("baseline.echo", 0.15),
        "raw.aiormq": row("raw.aiormq", 0.10),
        "grpc.typed": row("grpc.typed", 0.30),  # 1.2x
        "grpc.generic": row("grpc.generic", 0.28),  # 1.12x
    }
    phases = [unary("grpc.typed"), unary("grpc.generic")]
    lines = report.verdicts(phases, results, report.floors(results))
    cpu_lines = [line for line in lines if "Python floor" in line]
    assert "1.20x" in cpu_lines[0]
    assert cpu_lines[0].endswith("MISSED")
    assert "1.12x" in cpu_lines[1]
    assert cpu_lines[1].endswith("met")


def test_p99_at_half_peak_is_held_to_the_brokers_own_p99_plus_5_ms() -> None:
    """The latency verdict's budget is the broker's p99 at that rate + 5 ms."""
    phase = unary()
    within = {"grpc.typed": row("grpc.typed", None, half_p99_ms=14.9, broker_half_p99_ms=10.0)}
    over = {"grpc.typed": row("grpc.typed", None, half_p99_ms=15.1, broker_half_p99_ms=10.0)}
    (ok,) = [v for v in report.verdicts([phase], within, {}) if v.startswith("  latency")]
    (missed,) = [v for v in report.verdicts([phase], over, {}) if v.startswith("  latency")]
    assert ok.endswith("met")
    assert missed.endswith("MISSED")


def test_a_row_whose_load_one_worker_took_is_flagged_and_a_shared_one_is_not() -> None:
    """The kernel spreads connections, not calls: a row where one of two workers did nearly all
    the work measured one worker, and the run says so (the stream row of one run: 99.8 of 100)."""
    two = {1: 70.0, 2: 62.0}
    one_worker = row(
        "grpc.stream", 0.2, peak_rss_each_mb=two, cpu={"server": 100.0, "server_max": 99.8}
    )
    shared = row(
        "grpc.batch", 0.14, peak_rss_each_mb=two, cpu={"server": 102.4, "server_max": 52.0}
    )
    single = row("baseline.grpc", 0.44, peak_rss_each_mb={1: 54.0}, cpu={"server": 107.0})

    (warning,) = report.one_worker_warnings([one_worker, shared, single])

    assert warning.startswith(
        "WARNING grpc.stream: one of the server's 2 processes took 99.8% of their 100.0% CPU"
    )
    assert "measured one worker" in warning


def test_h2load_latency_leaves_out_the_first_seconds_and_failed_requests(tmp_path: Path) -> None:
    """The half-peak run's first second (connections opening) is not part of its latency."""
    log = tmp_path / "run.h2load.tsv"
    start = 1_796_158_918_000_000  # us, as h2load writes it
    rows = [(start + i, 200, 900_000) for i in range(5)]  # slow, while connecting: left out
    rows += [(start + 1_000_000 + i * 1_000, 200, 5_000) for i in range(99)]
    rows += [(start + 1_200_000, 503, 50_000)]  # not answered 200: not counted
    log.write_text("".join(f"{s}\t{status}\t{us}\n" for s, status, us in rows))

    assert loadgen._latency_percentiles(log, skip_seconds=1) == (5.0, 5.0)
    assert loadgen._latency_percentiles(log) == (5.0, 900.0)
