"""The one table, the ratios and DESIGN §9 verdicts, and build/bench/result.json."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.phases import Phase, PhaseResult

# DESIGN §9 targets that do not depend on another row.
P99_AT_HALF_PEAK_MS = 10.0
PEAK_RSS_MB = 150.0


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


def verdicts(phases: list[Phase], results: dict[str, PhaseResult]) -> list[str]:
    """One line per DESIGN §9 target this run could check."""
    lines = []
    for phase in phases:
        r = results.get(phase.key)
        if r is None or r.status == "skipped" or r.msgs_per_s is None:
            continue
        for other_key, target in phase.compare:
            if target is None:
                continue
            ratio = r.ratios.get(other_key)
            if ratio is None:
                lines.append(f"  {r.label}: >= {target:g}x {other_key}: not measured")
            else:
                mark = "met" if ratio >= target else "MISSED"
                lines.append(
                    f"  {r.label}: {ratio:.2f}x {other_key} (target >= {target:g}x): {mark}"
                )
        if phase.server is not None and r.key != "baseline.echo" and not phase.baseline:
            if r.half_p99_ms is not None:
                mark = "met" if r.half_p99_ms <= P99_AT_HALF_PEAK_MS else "MISSED"
                floor = ""
                if r.broker_half_p99_ms is not None:
                    floor = f"; raw aio-pika alone at that rate: {r.broker_half_p99_ms:.1f} ms"
                lines.append(
                    f"  {r.label}: p99 {r.half_p99_ms:.1f} ms at half peak "
                    f"(target <= {P99_AT_HALF_PEAK_MS:g} ms): {mark}{floor}"
                )
            if r.peak_rss_mb is not None:
                mark = "met" if r.peak_rss_mb <= PEAK_RSS_MB else "MISSED"
                lines.append(
                    f"  {r.label}: peak RSS {r.peak_rss_mb:.0f} MB "
                    f"(target <= {PEAK_RSS_MB:g} MB): {mark}"
                )
    return lines


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio_text(r: PhaseResult) -> str:
    if r.key == "raw":
        return "reference"
    names = {"baseline.grpc": "naive", "baseline.rest": "fastapi", "raw": "raw"}
    return ", ".join(f"{v:.2f}x {names.get(k, k)}" for k, v in r.ratios.items()) or "-"


def table(results: list[PhaseResult]) -> str:
    headers = [
        "path",
        "msgs/s",
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
            rows.append([r.label, "-", "-", "-", "-", "-", "-", "-", f"skipped: {r.reason}"])
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
    right = {1, 2, 3, 5}

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
