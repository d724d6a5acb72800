"""The Kubernetes manifests (k8s/): every kustomization renders (kustomize built into kubectl,
offline), every object validates against its schema, references between objects resolve, and the
RayService serves exactly fmprog/configs/<config>.yaml. No cluster runs here: nothing is applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from fmprog.backends import load_catalog
from policy.settings import PolicySettings
from router.settings import RouterSettings
from services.app import IMPORT_PATH, serve_config
from tests.deploy.manifests import (
    OVERLAYS,
    ROOT,
    by_kind,
    crd_schema,
    is_custom,
    kustomize,
    load_script,
    missing_crds,
    one,
    strict,
    validate,
)

FOLDERS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
CONFIGS = {"dev-cpu": ROOT / "fmprog/configs/synthetic.yaml", "prod-gpu": ROOT / "fmprog/configs/gpu.yaml"}
WORKLOADS = ("Deployment", "StatefulSet")
DEV_DATABASE_URL = "postgresql+psycopg://fmprog:dev-database-password-not-a-secret@fmprog-postgres:5432/fmprog"


def pod_templates(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod template: (owner, template), the RayService's head and worker groups included."""
    out = [
        (f"{o['kind']} {o['metadata']['name']}", o["spec"]["template"]) for k in WORKLOADS for o in by_kind(objects, k)
    ]
    for service in by_kind(objects, "RayService"):
        cluster = service["spec"]["rayClusterConfig"]
        out.append(("ray head", cluster["headGroupSpec"]["template"]))
        out += [(f"ray worker group {g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    return out


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def settings_env(objects: tuple[dict[str, Any], ...], prefix: str) -> dict[str, str]:
    configmap = one(objects, "ConfigMap", f"fmprog-{prefix}-settings")
    return configmap["data"]


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", FOLDERS)
def test_builtin_objects_validate_against_the_kubernetes_schemas(folder: str) -> None:
    objects = kustomize(folder)
    assert objects, f"k8s/{folder} renders nothing"
    for obj in objects:
        if not is_custom(obj):
            validate(obj)


@pytest.mark.parametrize("folder", FOLDERS)
def test_custom_resources_validate_against_their_crds(folder: str) -> None:
    reason = missing_crds()
    if reason:
        pytest.skip(reason)
    custom = [obj for obj in kustomize(folder) if is_custom(obj)]
    assert {obj["kind"] for obj in custom} == {"RayService", "ServiceMonitor", "PodMonitor"}
    for obj in custom:
        validate(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ray_cluster_spec_validates_against_the_raycluster_crd(overlay: str) -> None:
    """A RayService's rayClusterConfig is a RayCluster's spec: check it against that CRD too."""
    reason = missing_crds()
    if reason:
        pytest.skip(reason)
    import jsonschema

    spec_schema = crd_schema("ray.io", "RayCluster", "v1")["properties"]["spec"]
    cluster = one(kustomize(f"overlays/{overlay}"), "RayService")["spec"]["rayClusterConfig"]
    errors = list(jsonschema.Draft202012Validator(strict(spec_schema)).iter_errors(cluster))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]]


def test_the_schema_checks_catch_mistakes() -> None:
    """The validators are strict: an unknown field or a wrong type fails, as kubectl apply would."""
    objects = kustomize("overlays/prod-gpu")
    deployment = one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolicyy"):
        validate(deployment)
    hpa = one(objects, "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplicas"] = "four"
    with pytest.raises(AssertionError, match="maxReplicas"):
        validate(hpa)
    if missing_crds() is None:
        service = one(objects, "RayService")
        service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
        with pytest.raises(AssertionError, match="maxReplica"):
            validate(service)
        monitor = one(objects, "ServiceMonitor", "fmprog-router")
        monitor["metadata"]["labelz"] = {}
        with pytest.raises(AssertionError, match="labelz"):
            validate(monitor)


def test_every_manifest_file_is_rendered_by_some_kustomization() -> None:
    """No YAML under k8s/ escapes the checks: each is a kustomization or is referenced by one."""
    referenced: set[Path] = set()
    for kustomization in (ROOT / "k8s").rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        folder = kustomization.parent
        referenced.add(kustomization)
        entries = list(spec.get("resources", [])) + [p["path"] for p in spec.get("patches", []) if "path" in p]
        for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            entries += [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
        for entry in entries:
            path = (folder / entry).resolve()
            assert path.exists(), f"{kustomization.relative_to(ROOT)} refers to {entry}, which does not exist"
            referenced.add(path)
    files = {p.resolve() for p in (ROOT / "k8s").rglob("*") if p.suffix in {".yaml", ".yml", ".json"}}
    orphans = sorted(str(p.relative_to(ROOT)) for p in files - referenced)
    assert not orphans, f"files no kustomization renders: {orphans}"


# -- generated files and the Serve config ----------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    render = load_script("render_deploy")
    stale = render.stale(render.rendered())
    assert not stale, f"out of date: {[str(p) for p in stale]}; run .venv/bin/python scripts/render_deploy.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rayservice_serves_its_backend_configuration(overlay: str) -> None:
    """serveConfigV2 is the Serve config of fmprog/configs/<config>.yaml (gpu.yaml in production):
    the same applications, import path and arguments as ``fmprog serve-config`` prints."""
    service = one(kustomize(f"overlays/{overlay}"), "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    catalog = load_catalog(CONFIGS[overlay])
    assert embedded == serve_config(catalog)
    assert [app["name"] for app in embedded["applications"]] == [spec.name for spec in catalog.backends]
    assert {app["import_path"] for app in embedded["applications"]} == {IMPORT_PATH}
    backends_configmap = one(kustomize(f"overlays/{overlay}"), "ConfigMap", "fmprog-backends")
    assert backends_configmap["data"]["backends.yaml"] == CONFIGS[overlay].read_text()


def test_production_serves_the_gpu_configuration() -> None:
    embedded = yaml.safe_load(one(kustomize("overlays/prod-gpu"), "RayService")["spec"]["serveConfigV2"])
    assert embedded == serve_config(load_catalog(ROOT / "fmprog/configs/gpu.yaml"))


def test_gpu_worker_groups_give_one_gpu_to_each_backend_replica() -> None:
    """One GPU per worker pod, and as many pods as the GPU config's replicas can use: the group's
    bounds are the sums of the backends' autoscaling bounds."""
    catalog = load_catalog(ROOT / "fmprog/configs/gpu.yaml")
    gpu_backends = [spec for spec in catalog.backends if spec.resources.num_gpus > 0]
    assert all(spec.resources.num_gpus == 1 for spec in gpu_backends)
    cluster = one(kustomize("overlays/prod-gpu"), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] == sum(s.autoscaling_config.min_replicas for s in gpu_backends)
    assert gpu["maxReplicas"] == sum(s.autoscaling_config.max_replicas for s in gpu_backends)
    assert gpu["replicas"] == gpu["minReplicas"]
    assert float(container["resources"]["limits"]["cpu"]) >= max(s.resources.num_cpus for s in gpu_backends)
    for name, group in groups.items():
        if name != "gpu":
            for other in group["template"]["spec"]["containers"]:
                assert "nvidia.com/gpu" not in other["resources"].get("limits", {}), f"group {name} asks for GPUs"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "production keeps replicas off the head"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert any(s.autoscaling_config.max_replicas > s.autoscaling_config.min_replicas for s in catalog.backends)


def test_development_asks_for_no_gpu() -> None:
    cluster = one(kustomize("overlays/dev-cpu"), "RayService")["spec"]["rayClusterConfig"]
    for _, template in pod_templates((one(kustomize("overlays/dev-cpu"), "RayService"),)):
        for container in template["spec"]["containers"]:
            assert "nvidia.com/gpu" not in str(container.get("resources"))
    reserved = sum(s.resources.num_cpus for s in load_catalog(CONFIGS["dev-cpu"]).backends)
    assert float(cluster["headGroupSpec"]["rayStartParams"]["num-cpus"]) >= reserved


# -- references between objects ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_names_resolve(overlay: str) -> None:
    objects = kustomize(f"overlays/{overlay}")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    templates = pod_templates(objects)
    services = by_kind(objects, "Service")
    for service in services:
        selector = service["spec"]["selector"]
        targets = [t for _, t in templates if matches(selector, t["metadata"]["labels"])]
        assert targets, f"Service {service['metadata']['name']} selects no pods"
        container_ports = {p["name"] for t in targets for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"Service {service['metadata']['name']}: {port}"
    for monitor in by_kind(objects, "ServiceMonitor"):
        selected = [s for s in services if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert selected, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    (pod_monitor,) = by_kind(objects, "PodMonitor")
    ray_pods = [
        (o, t) for o, t in templates if matches(pod_monitor["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])
    ]
    assert {owner for owner, _ in ray_pods} == {owner for owner, _ in templates if owner.startswith("ray ")}
    ray_ports = {p["name"] for _, t in ray_pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= ray_ports
    for _, template in ray_pods:  # every Ray pod exports its metrics on the port the PodMonitor scrapes
        assert "metrics" in {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names
        assert "replicas" not in one(objects, target["kind"], target["name"])["spec"], "the HPA owns the count"
    for statefulset in by_kind(objects, "StatefulSet"):
        governing = one(objects, "Service", statefulset["spec"]["serviceName"])
        assert governing["spec"].get("clusterIP") == "None"
        assert statefulset["spec"]["replicas"] == 1, "the policy and the database are their state's only writers"
        assert statefulset["spec"]["volumeClaimTemplates"]
    external_secrets = (
        {"fmprog-router-api-key", "fmprog-policy-api-key", "fmprog-postgres"} if overlay == "prod-gpu" else set()
    )
    claims = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    for owner, template in templates:
        spec = template["spec"]
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names, owner
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in names or ref["name"] in external_secrets, owner
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, owner
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, owner


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_the_services_own(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMaps set only variables the router and the policy read, with values they accept,
    and their URLs name the Services that exist."""
    objects = kustomize(f"overlays/{overlay}")
    router_env = settings_env(objects, "router")
    policy_env = settings_env(objects, "policy")
    for prefix, env, model in (
        ("FMPROG_ROUTER_", router_env, RouterSettings),
        ("FMPROG_POLICY_", policy_env, PolicySettings),
    ):
        fields = {f"{prefix}{name.upper()}" for name in model.model_fields}
        assert set(env) <= fields, f"unknown settings: {sorted(set(env) - fields)}"
    for name, value in {**router_env, **policy_env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FMPROG_ROUTER_API_KEY", "x" * 24)  # the Secrets', at run time
    monkeypatch.setenv("FMPROG_ROUTER_POLICY_API_KEY", "y" * 24)
    monkeypatch.setenv("FMPROG_ROUTER_DATABASE", DEV_DATABASE_URL)  # the Secret's, at run time
    monkeypatch.setenv("FMPROG_POLICY_API_KEY", "y" * 24)
    router, policy = RouterSettings(), PolicySettings()
    ray_service = one(objects, "RayService")
    serve = urlsplit(router.serve_url)
    assert serve.hostname == f"{ray_service['metadata']['name']}-serve-svc"  # KubeRay's name for it
    assert serve.port == yaml.safe_load(ray_service["spec"]["serveConfigV2"])["http_options"]["port"]
    policy_url = urlsplit(router.policy_url or "")
    policy_service = one(objects, "Service", policy_url.hostname or "?")
    assert policy_url.port in {p["port"] for p in policy_service["spec"]["ports"]}
    assert policy.port == policy_url.port
    deployment = one(objects, "Deployment", "fmprog-router")
    mounts = {m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert router.backends_config.parent.as_posix() in mounts
    assert "FMPROG_ROUTER_DATABASE" not in router_env, "the database URL holds a password: it is in a Secret"
    statefulset = one(objects, "StatefulSet", "fmprog-policy")
    mounts = {m["mountPath"] for m in statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert policy.state_dir.as_posix() in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_non_root_user_with_tagged_images(overlay: str) -> None:
    objects = kustomize(f"overlays/{overlay}")
    serve_image = "fmprog/serve-gpu" if overlay == "prod-gpu" else "fmprog/serve-cpu"
    for owner, template in pod_templates(objects):
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, owner
        for container in template["spec"]["containers"]:
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and tag != "latest", f"{owner}: untagged image {container['image']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, owner
            if owner.startswith("ray "):
                assert name == serve_image, owner
            elif owner == "StatefulSet fmprog-postgres":
                assert name == "postgres", owner
            else:
                assert name in {"fmprog/router", "fmprog/policy"}, owner


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_several_routers_share_one_postgresql_on_any_nodes(overlay: str) -> None:
    """The routers are not pinned to a node and scale to several replicas; each reads its database
    URL from the Secret fmprog-postgres, which names the PostgreSQL Service, its port and the
    database and user the StatefulSet creates, with the password the StatefulSet is given."""
    objects = kustomize(f"overlays/{overlay}")
    deployment = one(objects, "Deployment", "fmprog-router")
    spec = deployment["spec"]["template"]["spec"]
    assert "podAffinity" not in spec.get("affinity", {}), "the routers are pinned to one node"
    assert not any("persistentVolumeClaim" in v for v in spec.get("volumes", [])), "a router volume pins it"
    assert not [c for c in by_kind(objects, "PersistentVolumeClaim") if "router" in c["metadata"]["name"]]
    hpa = one(objects, "HorizontalPodAutoscaler", "fmprog-router")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    (container,) = spec["containers"]
    env = {v["name"]: v for v in container.get("env", [])}
    ref = env["FMPROG_ROUTER_DATABASE"]["valueFrom"]["secretKeyRef"]
    assert ref["name"].startswith("fmprog-postgres") and ref["key"] == "url"

    postgres = one(objects, "StatefulSet", "fmprog-postgres")
    (server,) = postgres["spec"]["template"]["spec"]["containers"]
    server_env = {v["name"]: v for v in server["env"]}
    assert server_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {**ref, "key": "password"}
    service = one(objects, "Service", postgres["spec"]["serviceName"])
    if overlay == "dev-cpu":  # the generated Secret (prod-gpu's is created by hand, as its kustomization says)
        import base64

        secret = one(objects, "Secret", ref["name"])["data"]
        url = urlsplit(base64.b64decode(secret["url"]).decode())
        assert RouterSettings(database=url.geturl(), api_key="x" * 24).database == url.geturl()
        assert url.hostname == service["metadata"]["name"]
        assert url.port in {p["port"] for p in service["spec"]["ports"]}
        assert (
            url.username == server_env["POSTGRES_USER"]["value"]
            and url.path == f"/{server_env['POSTGRES_DB']['value']}"
        )
        assert url.password == base64.b64decode(secret["password"]).decode()
    policy = one(objects, "NetworkPolicy", "fmprog-postgres")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "fmprog-router"}}}]
