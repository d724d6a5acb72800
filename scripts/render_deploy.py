"""Write the deployment files generated from the project's own sources, or check them.

    .venv/bin/python scripts/render_deploy.py           # (re)write them
    .venv/bin/python scripts/render_deploy.py --check   # exit 1 naming each file that is out of date

What it writes (tests/deploy fails while any of them is out of date):
- ``deploy/grafana/dashboards/fmprog.json``: the Grafana dashboard, from the panels below.
- ``k8s/base/generated/fmprog-dashboard.json``: the same dashboard, for its ConfigMap.
- ``k8s/overlays/<overlay>/generated/backends.yaml``: the overlay's backend configuration, a copy
  of ``fmprog/configs/<config>.yaml`` (kustomize reads only files inside an overlay).
- ``k8s/overlays/<overlay>/generated/serve-config.yaml``: a patch setting the RayService's
  ``serveConfigV2`` to the Serve config of that backend configuration
  (``services.app.serve_config``, what ``fmprog serve-config`` prints).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DASHBOARD = Path("deploy/grafana/dashboards/fmprog.json")
DASHBOARD_COPY = Path("k8s/base/generated/fmprog-dashboard.json")
RAYSERVICE_NAME = "fmprog-backends"
# kustomize overlay -> the backend configuration it serves
OVERLAYS = {"dev-cpu": Path("fmprog/configs/synthetic.yaml"), "prod-gpu": Path("fmprog/configs/gpu.yaml")}
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
PROGRAM = 'program=~"$program"'
QUALITY_WINDOW = "1h"
LABELS = "fmprog_program_labels_total"
BINARY = "fmprog_program_binary_labels_total"


# -- the Grafana dashboard ---------------------------------------------------------------------


def _labels(outcome: str, metric: str = LABELS) -> str:
    """Labels counted with ``outcome`` per program over the quality window: every router exports the
    store's counts for the whole database, so any one of them (max) is the cluster's."""
    return f'max by (program) (increase({metric}{{{PROGRAM}, outcome="{outcome}"}}[{QUALITY_WINDOW}]))'


def _target(expr: str, legend: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": True}


def _panel(
    title: str, description: str, targets: list[tuple[str, str]], *, unit: str = "short", stack: bool = False
) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom |= {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 60}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if unit == "percentunit":
        defaults |= {"min": 0, "max": 1}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [_target(expr, legend) for expr, legend in targets],
    }


def _rate(metric: str, by: str, selector: str = PROGRAM) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"


def _quantile(q: float, metric: str, by: str = "", selector: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    matchers = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{matchers}[{RATE}])))"


def _rows() -> list[tuple[str, list[dict[str, Any]]]]:
    cost = "Cost: millions of model parameters per backend invocation (the paper's unit), per second."
    return [
        (
            "Cost",
            [
                _panel("Cost rate by program", cost, [(_rate("fmprog_cost_total", "program"), "{{program}}")]),
                _panel("Cost rate by function", cost, [(_rate("fmprog_cost_total", "function"), "{{function}}")]),
                _panel("Cost rate by backend", cost, [(_rate("fmprog_cost_total", "backend"), "{{backend}}")]),
                _panel(
                    "Cost per answered frame by program",
                    "Cost charged per frame answered (millions of parameters).",
                    [
                        (
                            f"{_rate('fmprog_cost_total', 'program')} / {_rate('fmprog_answers_total', 'program')}",
                            "{{program}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Backends",
            [
                _panel(
                    "Backend mix: share of each function's calls per backend",
                    "Which backends the policy chooses: for each function, the fraction of its calls that went "
                    "to each backend.",
                    [
                        (
                            f"{_rate('fmprog_backend_calls_total', 'function, backend')} / on (function) group_left "
                            f"{_rate('fmprog_backend_calls_total', 'function')}",
                            "{{function}} {{backend}}",
                        )
                    ],
                    unit="percentunit",
                    stack=True,
                ),
                _panel(
                    "Backend latency p50 / p99",
                    "Backend call latency as the router measures it.",
                    [
                        (_quantile(0.5, "fmprog_backend_latency_seconds", "backend"), "p50 {{backend}}"),
                        (_quantile(0.99, "fmprog_backend_latency_seconds", "backend"), "p99 {{backend}}"),
                    ],
                    unit="s",
                ),
                _panel(
                    "Failed backend calls",
                    "Backend invocations that failed (each is retried once, then replaced).",
                    [(_rate("fmprog_backend_calls_total", "backend", f'{PROGRAM}, ok="false"'), "{{backend}}")],
                    unit="reqps",
                ),
                _panel(
                    "Fallbacks by reason",
                    "Answers that used the fallback decision, and backend retries and replacements.",
                    [(_rate("fmprog_fallbacks_total", "reason"), "{{reason}}")],
                    unit="reqps",
                ),
            ],
        ),
        (
            "Quality and traffic",
            [
                _panel(
                    f"Accuracy by program (labels of the last {QUALITY_WINDOW})",
                    "Right answers over labelled answers, from the label counters the store keeps for every "
                    "router on the database (each router reports the same counts, hence max, not sum).",
                    [
                        (
                            f"{_labels('right')} / ({_labels('right')} + {_labels('wrong')})",
                            "{{program}}",
                        )
                    ],
                    unit="percentunit",
                ),
                _panel(
                    f"F1 on positives by program (labels of the last {QUALITY_WINDOW})",
                    "2 TP / (2 TP + FP + FN) of binary programs (positive: yes), from the store's label counters.",
                    [
                        (
                            f"2 * {_labels('tp', BINARY)} / "
                            f"(2 * {_labels('tp', BINARY)} + {_labels('fp', BINARY)} + {_labels('fn', BINARY)})",
                            "{{program}}",
                        )
                    ],
                    unit="percentunit",
                ),
                _panel(
                    "Answers and feedback per second",
                    "Frames answered, and new labels received, per program.",
                    [
                        (_rate("fmprog_answers_total", "program"), "answers {{program}}"),
                        (_rate("fmprog_feedback_total", "program", f'{PROGRAM}, outcome="new"'), "labels {{program}}"),
                    ],
                    unit="reqps",
                ),
                _panel(
                    "Errors by route and status",
                    "Requests the router answered with an error.",
                    [(f"sum by (route, status) (rate(fmprog_errors_total[{RATE}]))", "{{route}} {{status}}")],
                    unit="reqps",
                ),
            ],
        ),
        (
            "Latency",
            [
                _panel(
                    "Answer latency p50 / p99",
                    "End to end: decoding, the policy's decision and the program run with its backend calls.",
                    [
                        (_quantile(0.5, "fmprog_answer_latency_seconds", selector=PROGRAM), "p50"),
                        (_quantile(0.99, "fmprog_answer_latency_seconds", selector=PROGRAM), "p99"),
                    ],
                    unit="s",
                ),
                _panel(
                    "Answer latency p99 by program",
                    "End-to-end answer latency per program.",
                    [(_quantile(0.99, "fmprog_answer_latency_seconds", "program", PROGRAM), "{{program}}")],
                    unit="s",
                ),
                _panel(
                    "Policy decision latency p99",
                    "As the router waits for it, and the policy's own time to decide, per algorithm.",
                    [
                        (_quantile(0.99, "fmprog_policy_decision_latency_seconds"), "router's wait"),
                        (_quantile(0.99, "fmprog_policy_decide_seconds", "algorithm"), "decide {{algorithm}}"),
                    ],
                    unit="s",
                ),
                _panel(
                    "Policy: pending decisions, outbox, training",
                    "Decisions waiting for feedback, router messages waiting for delivery to the policy, and "
                    "training steps per second.",
                    [
                        ("sum(fmprog_policy_pending_decisions)", "pending decisions"),
                        ("max(fmprog_policy_outbox)", "outbox"),  # one outbox, shared by the routers
                        (f"sum(rate(fmprog_policy_training_steps_total[{RATE}]))", "training steps/s"),
                    ],
                ),
            ],
        ),
        (
            "Replicas (Ray Serve)",
            [
                _panel(
                    "Healthy replicas per deployment",
                    "Ray Serve replicas passing their health check, per application (backend) and deployment "
                    "(a vLLM backend has two: its front and its LLM server, one GPU per replica).",
                    [
                        (
                            "sum by (application, deployment) (ray_serve_deployment_replica_healthy)",
                            "{{application}} / {{deployment}}",
                        )
                    ],
                ),
                _panel(
                    "Autoscaling target replicas",
                    "The replica count Ray Serve's autoscaler is moving each deployment to.",
                    [
                        (
                            "max by (application, deployment) (ray_serve_autoscaling_target_replicas)",
                            "{{application}} / {{deployment}}",
                        )
                    ],
                ),
                _panel(
                    "Ongoing requests seen by the autoscaler",
                    "The autoscaler's input: ongoing requests of each deployment. It adds replicas while this "
                    "exceeds target_ongoing_requests per replica for upscale_delay_s.",
                    [
                        (
                            "max by (application, deployment) (ray_serve_autoscaling_total_requests)",
                            "{{application}} / {{deployment}}",
                        )
                    ],
                ),
            ],
        ),
    ]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard: rows of time series, filtered by a ``program`` variable."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row_title, row_panels in _rows():
        panels.append({"type": "row", "title": row_title, "collapsed": False, "gridPos": _grid(0, y, 24, 1)})
        y += 1
        for i, panel in enumerate(row_panels):
            panel["gridPos"] = _grid((i % 2) * 12, y + (i // 2) * 8, 12, 8)
            panels.append(panel)
        y += 8 * ((len(row_panels) + 1) // 2)
    for panel_id, panel in enumerate(panels, start=1):
        panel["id"] = panel_id
    return {
        "uid": "fmprog-overview",
        "title": "fmprog: cost, backend mix, accuracy, latency, replicas",
        "description": "Foundation model programs served by fmprog: router, policy and Ray Serve metrics.",
        "tags": ["fmprog"],
        "timezone": "browser",
        "editable": False,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "program",
                    "label": "Program",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": "label_values(fmprog_answers_total, program)", "refId": "program"},
                    "definition": "label_values(fmprog_answers_total, program)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "sort": 1,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def _grid(x: int, y: int, w: int, h: int) -> dict[str, int]:
    return {"x": x, "y": y, "w": w, "h": h}


# -- the Kubernetes files ---------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (``|``), so the embedded Serve config reads as YAML."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def serve_config_text(config: Path) -> str:
    """The Ray Serve config of a backend configuration, as ``fmprog serve-config`` prints it."""
    from fmprog.backends import load_catalog
    from services.app import serve_config

    return yaml.safe_dump(serve_config(load_catalog(config)), sort_keys=False)


def serve_config_patch(config: Path) -> str:
    patch = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": RAYSERVICE_NAME},
        "spec": {"serveConfigV2": serve_config_text(ROOT / config)},
    }
    header = (
        f"# Generated by scripts/render_deploy.py from {config.as_posix()}: do not edit.\n"
        "# The RayService's Serve applications: one per backend, import path services.app:backend_app.\n"
    )
    return header + yaml.dump(patch, Dumper=_Dumper, sort_keys=False, width=1000)


def rendered() -> dict[Path, str]:
    """Every generated file (relative to the repository root) and the text it must hold."""
    dashboard_text = json.dumps(dashboard(), indent=2) + "\n"
    files = {DASHBOARD: dashboard_text, DASHBOARD_COPY: dashboard_text}
    for overlay, config in OVERLAYS.items():
        generated = Path("k8s/overlays") / overlay / "generated"
        files[generated / "backends.yaml"] = (ROOT / config).read_text()
        files[generated / "serve-config.yaml"] = serve_config_patch(config)
    return files


def stale(files: dict[Path, str]) -> list[Path]:
    """The generated files whose text on disk differs from what they must hold (or that are missing)."""
    out = []
    for path, text in files.items():
        target = ROOT / path
        if not target.is_file() or target.read_text() != text:
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    files = rendered()
    out_of_date = stale(files)
    if args.check:
        for path in out_of_date:
            print(f"out of date: {path} (run scripts/render_deploy.py)", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in out_of_date:
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / path).write_text(files[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
