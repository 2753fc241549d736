"""The Kubernetes manifests in infra/, checked offline against KubeRay's own CRD schemas.

Each RayCluster / RayJob / RayService ``spec`` is validated with jsonschema against the v1
``openAPIV3Schema`` of the CRDs in ``../shared/kuberay-crds`` (see its README), made as strict
as ``kubectl apply`` (which rejects unknown fields). CEL rules (``x-kubernetes-validations``)
are not evaluated. The strings KubeRay passes on to Ray (runtime envs, the Serve config) and
the job commands are checked with Ray's and rayhash's own parsers.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
MANIFESTS = ("raycluster.yaml", "rayjob-train.yaml", "rayjob-encode.yaml", "rayservice.yaml")
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
CREDENTIAL_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def constraint_pins() -> dict[str, str]:
    """The exact versions scripts/setup.sh installs, by normalised package name."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version.strip()
    return pins


def ray_version() -> str:
    return constraint_pins()["ray"]


def runtime_requirements() -> list[str]:
    """What a job needs on the stock Ray image: pyproject's dependencies less Ray itself, each at
    the version constraints.txt pins, so a cluster runs what CI tested."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins, want = constraint_pins(), []
    for dep in deps:
        name, extras = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?", dep).groups()
        if name != "ray":
            want.append(f"{name}{extras or ''}=={pins[re.sub(r'[-_.]+', '-', name.lower())]}")
    return want


def load_manifests() -> list[tuple[str, dict]]:
    docs = []
    for name in MANIFESTS:
        for doc in yaml.safe_load_all((INFRA / name).read_text()):
            if doc is not None:
                docs.append((name, doc))
    return docs


# --- CRD schemas -------------------------------------------------------------------------------


def crd_dir() -> Path:
    # The repo is <root>/main with shared/ beside it; a fresh CI clone may hold shared/ inside.
    for root in (REPO.parent, REPO):
        if (root / "shared" / "kuberay-crds").is_dir():
            return root / "shared" / "kuberay-crds"
    pytest.skip(f"KubeRay CRDs not found at {REPO.parent / 'shared/kuberay-crds'} or {REPO / 'shared/kuberay-crds'}")


def kube_strict(node: dict) -> dict:
    """Make a structural CRD schema mean what the API server enforces, in JSON-schema terms.

    Walks schema nodes only (never the field names under ``properties``), in place.
    """
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)  # quantities and ports: 4, "4" and "4Gi" are all fine
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and not open_ended:
        node["additionalProperties"] = False  # kubectl's default --validate=strict refuses unknown fields
    children = list(node.get("properties", {}).values())
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            children.append(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        children.extend(node.get(key, []))
    for child in children:
        kube_strict(child)
    return node


@functools.cache
def spec_validator(kind: str) -> jsonschema.Draft7Validator:
    """The validator of ``spec`` for a KubeRay kind; parsed once per session (the CRDs are ~1 MB each)."""
    text = (crd_dir() / CRD_FILES[kind]).read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 4x faster
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = kube_strict(v1["schema"]["openAPIV3Schema"]["properties"]["spec"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)  # ignores the x-kubernetes-* keywords left


def spec_errors(kind: str, spec: dict) -> list[str]:
    errors = sorted(spec_validator(kind).iter_errors(spec), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, ['spec', *e.absolute_path]))}: {e.message[:300]}" for e in errors]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_crd(name):
    docs = [doc for n, doc in load_manifests() if n == name]
    assert docs, f"{name} holds no document"
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", f"{name}: apiVersion {doc['apiVersion']!r}"
        assert doc["kind"] in CRD_FILES, f"{name}: kind {doc['kind']!r} is not one of {list(CRD_FILES)}"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, f"{name}: top-level keys {sorted(doc)}"
        assert DNS_LABEL.match(doc["metadata"]["name"]), f"{name}: metadata.name is not a DNS label"
        errors = spec_errors(doc["kind"], doc["spec"])
        assert not errors, f"{name} does not match the {doc['kind']} CRD:\n" + "\n".join(errors)


def test_kinds():
    assert sorted(doc["kind"] for _, doc in load_manifests()) == ["RayCluster", "RayJob", "RayJob", "RayService"]


def raycluster_spec() -> dict:
    (spec,) = [doc["spec"] for _, doc in load_manifests() if doc["kind"] == "RayCluster"]
    return copy.deepcopy(spec)


def renamed(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


# Each of these makes the API server refuse the RayCluster; the validator must too.
BREAKAGES = {
    "replicas not an integer": lambda s: s["workerGroupSpecs"][0].update(replicas="two"),
    "required groupName missing": lambda s: s["workerGroupSpecs"][0].pop("groupName"),
    "required headGroupSpec missing": lambda s: s.pop("headGroupSpec"),
    "misspelt field": lambda s: renamed(s, "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
    "rayStartParams value not a string": lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
    "quantity not a quantity": lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ].update(memory="16 GiB"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_copy_fails(breakage):
    spec = raycluster_spec()
    BREAKAGES[breakage](spec)
    assert spec_errors("RayCluster", spec), f"a RayCluster with {breakage} passed validation"


@pytest.mark.parametrize("value", [4, "4", "500m", "16Gi", "1.5"])
def test_quantities_accept_int_or_string(value):
    spec = raycluster_spec()
    spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = value
    assert spec_errors("RayCluster", spec) == []


# --- what KubeRay hands to Ray -----------------------------------------------------------------


def cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for name, doc in load_manifests():
        spec = doc["spec"]
        cluster = {
            "RayCluster": spec,
            "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig"),
        }[doc["kind"]]
        assert cluster is not None, f"{name}: no cluster spec (rayClusterSpec / rayClusterConfig)"
        out.append((name, cluster))
    return out


def pod_groups(cluster: dict) -> list[tuple[str, dict]]:
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]


def test_images_match_pinned_ray():
    version = ray_version()
    for name, cluster in cluster_specs():
        assert cluster["rayVersion"] == version, f"{name}: rayVersion {cluster['rayVersion']}, pyproject pins {version}"
        for group, spec in pod_groups(cluster):
            for c in spec["template"]["spec"]["containers"]:
                gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
                want = f"rayproject/ray:{version}-py311{'-gpu' if gpu else ''}"
                assert c["image"] == want, f"{name} {group}/{c['name']}: image {c['image']}, want {want}"


def test_containers_have_resources_and_s3_settings():
    for name, cluster in cluster_specs():
        for group, spec in pod_groups(cluster):
            for c in spec["template"]["spec"]["containers"]:
                where = f"{name} {group}/{c['name']}"
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"].get(kind, {})), f"{where}: no cpu/memory {kind}"
                env = {e["name"]: e for e in c.get("env", [])}
                assert "value" in env.get("AWS_REGION", {}), f"{where}: AWS_REGION is not set"
                secrets = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
                assert "rayhash-s3" in secrets, f"{where}: credentials must come from the Secret rayhash-s3"
        assert cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0", name


def test_raycluster_gpu_group_autoscales_from_zero():
    spec = raycluster_spec()
    assert spec["enableInTreeAutoscaling"] is True
    gpu = [
        g
        for g in spec["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert len(gpu) == 1 and gpu[0]["minReplicas"] == 0 and gpu[0]["maxReplicas"] >= 4  # the header runs 4 GPU workers
    assert len(spec["workerGroupSpecs"]) == 2, "a CPU group and a GPU group"


def literal_credentials(text: str) -> list[str]:
    """AWS access key ids and secret-looking assignments in ``text``."""
    ids = re.findall(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])", text)
    secrets = re.findall(r"(?i)secret_access_key\W{1,4}[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text)
    return ids + secrets


def test_no_literal_credentials():
    assert literal_credentials("AKIA" + "Q" * 16) and literal_credentials("AWS_SECRET_ACCESS_KEY=" + "x/Y+" * 10)
    for path in sorted(INFRA.iterdir()):
        assert literal_credentials(path.read_text()) == [], f"{path.name} holds a literal AWS credential"
    for name, cluster in cluster_specs():
        for group, spec in pod_groups(cluster):
            for c in spec["template"]["spec"]["containers"]:
                inline = [e["name"] for e in c.get("env", []) if e["name"] in CREDENTIAL_VARS and "value" in e]
                assert not inline, f"{name} {group}: {inline} inline; use the Secret rayhash-s3"
    for where, env in runtime_envs():
        assert not CREDENTIAL_VARS & set(env.get("env_vars", {})), f"{where}: credentials in a runtime env"


def runtime_envs() -> list[tuple[str, dict]]:
    envs = [("runtime-env.yaml", yaml.safe_load((INFRA / "runtime-env.yaml").read_text()))]
    for name, doc in load_manifests():
        if doc["kind"] == "RayJob":
            envs.append((name, yaml.safe_load(doc["spec"]["runtimeEnvYAML"])))
        if doc["kind"] == "RayService":
            envs += [(f"{name} app {a['name']}", a["runtime_env"]) for a in serve_config(doc)["applications"]]
    return envs


def test_runtime_envs():
    from ray.runtime_env import RuntimeEnv

    want = runtime_requirements()
    for where, env in runtime_envs():
        RuntimeEnv(**env)  # Ray's own checks: field types, remote URIs of a supported archive kind
        assert env["pip"] == want, (
            f"{where}: pip list differs from pyproject.toml's dependencies (less Ray) at constraints.txt's versions"
        )
        if where != "runtime-env.yaml":  # the CLI's --working-dir . uploads the checkout instead
            assert re.fullmatch(r"s3://BUCKET/\S+\.zip", env.get("working_dir", "")), f"{where}: working_dir"


# --- the commands: every job and Serve argument must parse with rayhash's own configs ------------


def job_config_class(script: str):
    if script == "jobs/train_dsch.py":
        from rayhash.train.config import TrainConfig

        return TrainConfig
    if script == "jobs/encode.py":
        from rayhash.encode.config import EncodeConfig

        return EncodeConfig
    if script == "jobs/build_index.py":
        from rayhash.index import IndexBuildConfig

        return IndexBuildConfig
    raise AssertionError(f"no config class known for {script}")


def check_job_command(command: str, where: str) -> None:
    from rayhash import config

    argv = shlex.split(command)
    assert argv[0] == "python" and (REPO / argv[1]).is_file(), f"{where}: {argv[:2]} is not a script of the repo"
    path, overrides, rest = None, [], argv[2:]
    while rest:
        arg = rest.pop(0)
        if arg == "--config":
            path = rest.pop(0)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    assert path is None or (REPO / path).is_file(), f"{where}: config {path} not in the repo"
    try:
        config.load(job_config_class(argv[1]), str(REPO / path) if path else None, overrides)
    except config.ConfigError as e:
        raise AssertionError(f"{where}: {command!r} does not parse: {e}") from e


def documented_commands(path: Path) -> list[str]:
    """``python jobs/...`` commands in a YAML file's comments or in a README, continuation lines joined."""
    lines = path.read_text().splitlines()
    if path.suffix == ".yaml":
        lines = [line for line in lines if line.lstrip().startswith("#")]
    flat = re.sub(r"\\\n[#\s]*", " ", "\n".join(lines))
    return re.findall(r"python (jobs/\w+\.py(?: +(?:--config +\S+|--[\w.]+=\S+))*)", flat)


def test_job_commands_parse():
    entrypoints = [(n, d["spec"]["entrypoint"]) for n, d in load_manifests() if d["kind"] == "RayJob"]
    assert {e.split()[1] for _, e in entrypoints} == {"jobs/train_dsch.py", "jobs/encode.py"}
    for name, command in entrypoints:
        check_job_command(command, name)
    documented = [(p.name, f"python {c}") for p in sorted(INFRA.iterdir()) for c in documented_commands(p)]
    assert any("--run.use_gpu=true" in c for _, c in documented), "raycluster.yaml documents the GPU training job"
    for name, command in documented:
        check_job_command(command, name)
    with pytest.raises(AssertionError, match="numworkers"):
        check_job_command("python jobs/train_dsch.py --config configs/fmnist-dsch-64.yaml --run.numworkers=2", "typo")


def serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def test_serve_config():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeDeploySchema

    from rayhash import config
    from rayhash.serve.app import ServeConfig

    (doc,) = [d for _, d in load_manifests() if d["kind"] == "RayService"]
    serve = serve_config(doc)
    ServeDeploySchema.model_validate(serve)
    assert serve["http_options"]["host"] == "0.0.0.0", "the proxy must listen beyond the pod"
    (app,) = serve["applications"]
    local = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]
    assert app["import_path"] == local["import_path"] == "serve.app:app"
    cfg = config.from_dict(ServeConfig, app["args"])  # what Serve's builder does first
    assert cfg.index.endswith("/index_manifest.json") and cfg.checkpoint.startswith("s3://")
    for role in ("shards", "ingress", "encoder"):
        options = app["args"][role]
        assert not set(options) - set(DeploymentSchema.model_fields), f"{role}: unknown Serve options"
        assert RayActorOptionsSchema.model_validate(options["ray_actor_options"]).num_cpus > 0, role
        if "autoscaling_config" in options:
            AutoscalingConfig.model_validate(options["autoscaling_config"])
    assert "autoscaling_config" in app["args"]["shards"], "shard deployments autoscale"
