"""The operators' monitoring files name only metrics and labels the gateway exports.

deploy/grafana/task-gateway.json and deploy/prometheus/alerts.yaml are parsed with a PromQL
parser (promql-parser), so that a renamed metric or a misspelt label fails here instead of
drawing an empty panel or an alert that can never fire. promtool checks the rules' syntax
and behaviour itself (`make deploy-check`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import yaml

from tests.conftest import unavailable
from tests.deploy.dockerfile import ROOT

try:
    import promql_parser
except ImportError:  # pragma: no cover - depends on the machine
    unavailable(
        "The monitoring checks",
        "promql-parser is not installed (`make deploy-check` installs it)",
        allow_module_level=True,
    )

DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "task-gateway.json").read_text())
ALERTS = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())


def _scraped_families() -> tuple[dict[str, set[str]], set[str]]:
    """The families a running gateway exports, with their labels, read from its /metrics after
    a task over each transport (so that every labelled family has a series), and which of them
    are histograms. Not a list kept by hand: the gateway's own output."""
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.app.server import Gateway
    from tests.conftest import make_settings

    async def scrape() -> str:
        gateway = Gateway(make_settings())
        await gateway.start()
        try:
            task = {"user_id": "u", "payload": {"model": "m", "prompt": "p", "image_name": "n"}}
            base = f"http://127.0.0.1:{gateway.http_port}"
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/api/v1/images/generate", json=task) as answer:
                    assert answer.status == 200
                async with http.get(f"{base}/metrics") as answer:
                    return await answer.text()
        finally:
            await gateway.stop(grace=1)

    families: dict[str, set[str]] = {}
    histograms: set[str] = set()
    for family in text_string_to_metric_families(asyncio.run(scrape())):
        if not family.name.startswith(("task_gateway_", "grpc_server_", "http_server_")):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = {label for sample in family.samples for label in sample.labels} - {"le"}
        if family.type == "histogram":
            histograms.add(name)
    return families, histograms


FAMILIES, HISTOGRAMS = _scraped_families()
# Labels Prometheus adds to every target's series (the Kubernetes scrape adds namespace, pod).
TARGET_LABELS = {"instance", "job", "namespace", "pod"}


def _family(series: str) -> str | None:
    """The family a series name belongs to (histograms: its _bucket, _sum, _count)."""
    if series in FAMILIES and series not in HISTOGRAMS:
        return series
    base, _, suffix = series.rpartition("_")
    return base if base in HISTOGRAMS and suffix in ("bucket", "sum", "count") else None


def _grafana_to_promql(expr: str) -> str:
    """A Grafana query as plain PromQL: interval variables become 5m, others match anything."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of the dashboard."""
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match, f"variable {variable['name']}: {variable['definition']}"
            yield f"variable {variable['name']}", match.group(1)


def _alert_queries() -> Iterator[tuple[str, str]]:
    for group in ALERTS["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def _selectors_and_labels(expr: str) -> tuple[list[str], set[str]]:
    """The series names an expression selects, and every label name it mentions."""
    names: list[str] = []
    labels: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            named = [m.value for m in matchers if m.name == "__name__"]
            names.extend([node.name] if node.name else named)
            labels.update(m.name for m in matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching  # on (...) / ignoring (...)
            labels.update(matching.labels if matching is not None else [])

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names, labels


def _unknown(queries: Iterator[tuple[str, str]]) -> list[str]:
    """Each query's series outside the families, and labels none of its families has."""
    problems = []
    for where, query in queries:
        names, labels = _selectors_and_labels(_grafana_to_promql(query))
        families = {_family(name) for name in names}
        problems += [f"{where}: unknown metric {n}" for n in names if _family(n) is None]
        known = (
            TARGET_LABELS | {"le"} | set().union(*(FAMILIES.get(f or "", set()) for f in families))
        )
        problems += [
            f"{where}: label {label} is not one of {sorted(known)}" for label in labels - known
        ]
    return problems


def test_the_dashboard_queries_only_the_gateways_metrics_and_labels() -> None:
    """Every panel and variable of the dashboard selects known metric families by their labels."""
    assert _unknown(_dashboard_queries()) == []


def test_the_dashboard_shows_every_metric_family() -> None:
    """Each of the gateway's metric families is drawn by at least one panel."""
    drawn = {
        _family(name)
        for _, query in _dashboard_queries()
        for name in _selectors_and_labels(_grafana_to_promql(query))[0]
    }

    assert set(FAMILIES) - drawn == set()


def test_every_panel_queries_the_datasource_variable() -> None:
    """The dashboard imports into any Grafana: every query uses the ${datasource} variable."""
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]

    assert variable["query"] == "prometheus"
    assert panels
    for panel in panels:
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": f"${{{variable['name']}}}"}, panel[
                "title"
            ]


def test_the_alerts_query_only_the_gateways_metrics_and_labels() -> None:
    """Every alert of alerts.yaml selects known metric families by their labels."""
    assert _unknown(_alert_queries()) == []


def test_a_misspelt_metric_or_label_is_reported() -> None:
    """The check itself: an unknown metric and a label its family lacks are both named."""
    queries = iter(
        [
            ("a", "rate(task_gateway_task_total[5m])"),
            (
                "b",
                'sum by (route) (rate(http_server_request_duration_seconds_count{code="x"}[5m]))',
            ),
        ]
    )

    problems = _unknown(queries)

    assert problems[0] == "a: unknown metric task_gateway_task_total"
    assert {p.split(" is not")[0] for p in problems[1:]} == {"b: label route", "b: label code"}
