"""The one table, the ratios, the Python floors, the verdicts on docs/performance.md's targets,
and build/bench/result.json."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.phases import GrpcPhase, Phase, PhaseResult

# docs/performance.md, "The targets": those that do not depend on another row's throughput.
CPU_OVER_FLOOR = 1.15  # CPU per task at most this multiple of the Python floor
P99_OVER_BROKER_MS = 5.0  # p99 at half peak at most the broker's own p99 at that rate + this
PEAK_RSS_MB = 150.0  # the default workers together
# A share of a several-process server's CPU taken by one process that says the load never
# reached the others: the kernel put every connection on one worker (SO_REUSEPORT).
ONE_WORKER_SHARE = 0.9

# The Python floors: a no-broker server's CPU per call + raw aiormq's per confirmed message.
FLOORS = {"grpc": ("baseline.echo", "grpc.aio Echo"), "rest": ("floor.rest", "bare aiohttp")}
FLOOR_PUBLISHER = "raw.aiormq"
FLOOR_NAMES = {"grpc": "Python floor (gRPC)", "rest": "Python floor (REST)"}


def machine(rabbitmq_version: str) -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": rabbitmq_version,
    }


def add_ratios(phases: list[Phase], results: dict[str, PhaseResult]) -> None:
    """msgs/s of each phase over each phase it compares with, both measured in this run."""
    for phase in phases:
        mine = results.get(phase.key)
        if mine is None or not mine.msgs_per_s:
            continue
        for other_key, _target in phase.compare:
            other = results.get(other_key)
            if other is not None and other.msgs_per_s and other.status == "ok":
                mine.ratios[other_key] = round(mine.msgs_per_s / other.msgs_per_s, 2)


def _measured(results: dict[str, PhaseResult], key: str) -> PhaseResult | None:
    r = results.get(key)
    return r if r is not None and r.status == "ok" else None


def floors(results: dict[str, PhaseResult]) -> dict[str, dict[str, Any]]:
    """Each Python floor this run measured: its CPU ms per task and the rows it is made of."""
    out: dict[str, dict[str, Any]] = {}
    publisher = _measured(results, FLOOR_PUBLISHER)
    for kind, (server_key, server_name) in FLOORS.items():
        server = _measured(results, server_key)
        parts = [(server, server_key), (publisher, FLOOR_PUBLISHER)]
        missing = [key for row, key in parts if row is None or row.cpu_ms_per_task is None]
        if missing:
            out[kind] = {"missing": missing}
            continue
        assert server is not None
        assert publisher is not None
        assert server.cpu_ms_per_task is not None
        assert publisher.cpu_ms_per_task is not None
        out[kind] = {
            "ms_per_task": round(server.cpu_ms_per_task + publisher.cpu_ms_per_task, 4),
            "server": (server_name, server.cpu_ms_per_task),
            "publisher": ("raw aiormq", publisher.cpu_ms_per_task),
        }
    return out


def floor_lines(
    phases: list[Phase], results: dict[str, PhaseResult], measured: dict[str, dict[str, Any]]
) -> list[str]:
    """The floors, and every row held to one (or a peer of such a row) as a multiple of it."""
    lines = []
    for kind, floor in measured.items():
        name = FLOOR_NAMES[kind]
        if "missing" in floor:
            lines.append(f"{name}: not measured (no row: {', '.join(floor['missing'])})")
            continue
        (server_name, server_ms), (pub_name, pub_ms) = floor["server"], floor["publisher"]
        lines.append(
            f"{name}: {floor['ms_per_task']:.3f} ms CPU per task = {server_name} "
            f"{server_ms:.3f} ms per call + {pub_name} {pub_ms:.3f} ms per confirmed message"
        )
        for phase in phases:
            r = results.get(phase.key)
            if r is None or r.cpu_ms_per_task is None or r.status != "ok":
                continue
            held = phase.floor == kind
            peer_of_kind = phase.peer is not None and (
                (kind == "grpc") == isinstance(phase, GrpcPhase)
            )
            baseline_of_kind = phase.key == {"grpc": "baseline.grpc", "rest": "baseline.rest"}[kind]
            if held or peer_of_kind or baseline_of_kind:
                multiple = r.cpu_ms_per_task / floor["ms_per_task"]
                lines.append(
                    f"  {r.label}: {r.cpu_ms_per_task:.3f} ms per task = {multiple:.2f}x"
                    + (f" (target <= {CPU_OVER_FLOOR:g}x)" if held else "")
                )
    return lines


def _ratio_verdict(r: PhaseResult, other_key: str, target: float, what: str) -> str:
    ratio = r.ratios.get(other_key)
    if ratio is None:
        return f"  {what}: {r.label}: >= {target:g}x {other_key}: not measured ({other_key} absent)"
    mark = "met" if ratio >= target else "MISSED"
    return f"  {what}: {r.label}: {ratio:.2f}x {other_key} (target >= {target:g}x): {mark}"


def verdicts(
    phases: list[Phase], results: dict[str, PhaseResult], measured: dict[str, dict[str, Any]]
) -> list[str]:
    """One line per target of docs/performance.md this run could check, per row it applies to."""
    lines = []
    for phase in phases:
        r = results.get(phase.key)
        if r is None or r.status == "skipped":
            continue
        if r.status != "ok" or r.msgs_per_s is None:
            if phase.is_gateway or any(t is not None for _, t in phase.compare):
                lines.append(f"  {r.label}: not measured (the row failed)")
            continue
        what = {"grpc": "unary gRPC", "rest": "REST"}.get(phase.floor or "", "batching")
        for other_key, target in phase.compare:
            if target is not None:
                lines.append(_ratio_verdict(r, other_key, target, what))
        if phase.floor is not None:
            floor = measured.get(phase.floor, {})
            if "ms_per_task" not in floor or r.cpu_ms_per_task is None:
                lines.append(f"  {what}: {r.label}: CPU per task vs its floor: not measured")
            else:
                multiple = r.cpu_ms_per_task / floor["ms_per_task"]
                mark = "met" if multiple <= CPU_OVER_FLOOR else "MISSED"
                lines.append(
                    f"  {what}: {r.label}: CPU {r.cpu_ms_per_task:.3f} ms per task = "
                    f"{multiple:.2f}x {FLOOR_NAMES[phase.floor]} (target <= {CPU_OVER_FLOOR:g}x): "
                    f"{mark}"
                )
        if not phase.is_gateway:
            continue
        if phase.half_peak and r.half_p99_ms is not None:
            if r.broker_half_p99_ms is None:
                lines.append(f"  latency: {r.label}: the broker's own p99 not measured")
            else:
                budget = r.broker_half_p99_ms + P99_OVER_BROKER_MS
                mark = "met" if r.half_p99_ms <= budget else "MISSED"
                lines.append(
                    f"  latency: {r.label}: p99 {r.half_p99_ms:.1f} ms at half peak, the "
                    f"broker's {r.broker_half_p99_ms:.1f} ms (target <= +{P99_OVER_BROKER_MS:g} ms"
                    f" = {budget:.1f} ms): {mark}"
                )
        if r.peak_rss_mb is not None:
            mark = "met" if r.peak_rss_mb <= PEAK_RSS_MB else "MISSED"
            lines.append(
                f"  memory: {r.label}: peak RSS {r.peak_rss_mb:.0f} MB over "
                f"{len(r.peak_rss_each_mb)} process(es) (target <= {PEAK_RSS_MB:g} MB): {mark}"
            )
    return lines


def one_worker_warnings(results: list[PhaseResult]) -> list[str]:
    """Rows of a several-process server whose load one process took nearly all of."""
    return [
        f"WARNING {r.key}: one of the server's {len(r.peak_rss_each_mb)} processes took "
        f"{r.cpu['server_max']:.1f}% of their {r.cpu['server']:.1f}% CPU: the kernel put every "
        "connection on it (SO_REUSEPORT), so this row measured one worker"
        for r in results
        if len(r.peak_rss_each_mb) > 1
        and r.cpu.get("server", 0.0) > 0
        and r.cpu.get("server_max", 0.0) >= ONE_WORKER_SHARE * r.cpu["server"]
    ]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio_text(r: PhaseResult) -> str:
    if r.key == "raw":
        return "reference"
    names = {
        "baseline.grpc": "naive",
        "baseline.rest": "fastapi",
        "raw.aiormq": "aiormq",
        "peer.node.typed": "node",
        "grpc.typed": "gateway",
        "grpc.batch": "batch",
        "rest": "gateway",
    }
    return ", ".join(f"{v:.2f}x {names.get(k, k)}" for k, v in r.ratios.items()) or "-"


def _cpu_text(r: PhaseResult) -> str:
    """CPU ms per 1,000 tasks; marked when it is the publisher's or per call (no broker)."""
    if r.cpu_ms_per_task is None:
        return "-"
    text = f"{r.cpu_ms_per_task * 1000:,.0f}"
    if r.cpu_basis.startswith("publisher"):
        return text + " pub"
    return text + " /call" if r.cpu_basis.endswith("call") else text


def table(results: list[PhaseResult]) -> str:
    headers = [
        "path",
        "msgs/s",
        "CPU ms/1k",
        "p50 ms",
        "p99 ms",
        "p99 at half peak",
        "peak RSS MB",
        "ratio",
        "CPU% srv/mq/lg/other/all",
        "check",
    ]
    rows = []
    for r in results:
        if r.status == "skipped":
            rows.append([r.label, *["-"] * 8, f"skipped: {r.reason}"])
            continue
        half = "-"
        if r.half_p99_ms is not None:
            half = f"{r.half_p99_ms:.1f} @ {r.half_rate:,.0f}/s"
            if r.broker_half_p99_ms is not None:
                half += f" (raw {r.broker_half_p99_ms:.1f})"
        cpu = "-"
        if r.cpu:
            parts = [r.cpu.get(k) for k in ("server", "broker", "loadgen", "other", "machine")]
            cpu = "/".join("-" if p is None else f"{p:.0f}" for p in parts)
        rss = _fmt(r.peak_rss_mb)
        if len(r.peak_rss_each_mb) > 1:  # a --workers tree: the sum, how many, the largest
            rss += f" ({len(r.peak_rss_each_mb)}p, max {max(r.peak_rss_each_mb.values()):.0f}"
            rss += f", PSS {r.pss_after_peak_mb:.0f})" if r.pss_after_peak_mb else ")"
        rows.append(
            [
                r.label,
                _fmt(r.msgs_per_s, 0),
                _cpu_text(r),
                _fmt(r.p50_ms, 2),
                _fmt(r.p99_ms, 2),
                half,
                rss,
                _ratio_text(r),
                cpu,
                "ok" if r.status == "ok" else "FAIL",
            ]
        )
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    right = {1, 2, 3, 4, 6}

    def line(cells: list[str]) -> str:
        return " | ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def write_json(path: Path, document: dict[str, Any], results: list[PhaseResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = document | {"phases": [asdict(r) for r in results]}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
