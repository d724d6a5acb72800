"""The Grafana dashboard queries only metrics that exist, with their labels: fmprog's own from the
router's and the policy's registries, Ray Serve's from the installed Ray's source."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy.service import PolicyMetrics
from router.metrics import RouterMetrics
from tests.deploy.manifests import ROOT

DASHBOARD = ROOT / "deploy/grafana/dashboards/fmprog.json"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml"
# Ray Serve's metrics (exported by Ray's metrics agent with the prefix ray_), with their labels.
RAY_METRICS = {
    "ray_serve_deployment_replica_healthy": {"application", "deployment", "replica"},
    "ray_serve_autoscaling_target_replicas": {"application", "deployment"},
    "ray_serve_autoscaling_total_requests": {"application", "deployment"},
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@cache
def fmprog_metrics() -> dict[str, set[str]]:
    """Every series name the router and the policy export, with its label names."""
    out: dict[str, set[str]] = {}
    for registry in (RouterMetrics().registry, PolicyMetrics().registry):
        for collector in list(registry._collector_to_names):  # the registry's own metric objects
            labels = set(getattr(collector, "_labelnames", ()))
            for name in registry._collector_to_names[collector]:
                out[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    # A counter's or histogram's bare name is registered but never exported as a series.
    return {name: labels for name, labels in out.items() if f"{name}_total" not in out and f"{name}_bucket" not in out}


def targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], t["expr"]) for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_the_dashboard_parses_and_uses_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for wanted in (
        "Cost rate by program",
        "Cost rate by function",
        "Cost rate by backend",
        "Backend mix",
        "Accuracy",
        "F1",
        "Answer latency",
        "Backend latency",
        "Fallbacks",
        "Healthy replicas",
    ):
        assert any(title.startswith(wanted) for title in titles), f"no panel {wanted!r}"


def nodes(expr: object) -> list[object]:
    import promql_parser

    found: list[object] = []
    promql_parser.walk(expr, found.append)
    return found


def output_labels(node: Any, known: dict[str, set[str]]) -> set[str]:
    """The label names of the series an expression returns (the parts of PromQL the dashboard uses)."""
    import promql_parser as q

    if isinstance(node, q.VectorSelector):
        return set(known[node.name])
    if isinstance(node, q.MatrixSelector):
        return output_labels(node.vector_selector, known)
    if isinstance(node, q.ParenExpr | q.UnaryExpr):
        return output_labels(node.expr, known)
    if isinstance(node, q.Call):
        vectors = [output_labels(a, known) for a in node.args if not isinstance(a, q.NumberLiteral | q.StringLiteral)]
        labels = vectors[0] if vectors else set()
        return labels - {"le"} if node.func.name == "histogram_quantile" else labels
    if isinstance(node, q.AggregateExpr):
        if node.modifier is None:
            return set()
        if node.modifier.type == q.AggModifierType.By:
            return set(node.modifier.labels)
        return output_labels(node.expr, known) - set(node.modifier.labels)
    if isinstance(node, q.BinaryExpr):
        left, right = output_labels(node.lhs, known), output_labels(node.rhs, known)
        group_right = node.modifier is not None and node.modifier.card == q.VectorMatchCardinality.OneToMany
        return right if group_right else left
    return set()


@pytest.mark.parametrize(("title", "expr"), targets())
def test_every_query_parses_and_names_existing_metrics_and_labels(title: str, expr: str) -> None:
    """Parsed by a PromQL parser (Grafana's $__rate_interval read as 5m): each selector names an
    exported series and only its labels; each by/on label is on the series it groups or matches."""
    q = pytest.importorskip("promql_parser", reason="promql-parser (the test extra) is not installed")
    known = fmprog_metrics() | RAY_METRICS
    tree = q.parse(expr.replace("$__rate_interval", "5m"))
    selectors = [n for n in nodes(tree) if isinstance(n, q.VectorSelector)]
    assert selectors, f"{title}: no metric in {expr}"
    for selector in selectors:
        assert selector.name in known, f"{title}: {selector.name} is not exported by fmprog or Ray Serve"
        for matcher in selector.matchers.matchers:
            assert matcher.name in known[selector.name], f"{title}: {selector.name} has no label {matcher.name}"
    for node in nodes(tree):
        if isinstance(node, q.AggregateExpr) and node.modifier is not None:
            labels = output_labels(node.expr, known)
            assert set(node.modifier.labels) <= labels, f"{title}: {node.modifier} of series labelled {sorted(labels)}"
        if isinstance(node, q.BinaryExpr) and node.modifier and node.modifier.matching:
            for side in (node.lhs, node.rhs):
                labels = output_labels(side, known)
                assert set(node.modifier.matching.labels) <= labels, f"{title}: {node.modifier} on {sorted(labels)}"


def test_the_program_variable_reads_an_existing_metric() -> None:
    (variable,) = json.loads(DASHBOARD.read_text())["templating"]["list"]
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert match and match[2] in fmprog_metrics()[match[1]]


def test_ray_metric_names_exist_in_the_installed_ray() -> None:
    """Ray's names are listed here by hand; check each against the Ray that fmprog installs."""
    spec = find_spec("ray")
    assert spec is not None and spec.origin is not None
    source = "\n".join(p.read_text() for p in (Path(spec.origin).parent / "serve" / "_private").glob("*.py"))
    for name, labels in RAY_METRICS.items():
        bare = name.removeprefix("ray_")
        assert f'"{bare}"' in source, f"Ray Serve no longer defines {bare}"
        for label in labels - {"replica"}:
            assert f'"{label}"' in source
