"""infra/: the KubeRay manifests and the `ray up` cluster config, rendered from infra/values.yaml by
infra/render.py and checked offline with the validators of the tools that will read them.

Each rendered RayCluster / RayJob / RayService ``spec`` is validated with jsonschema against the v1
``openAPIV3Schema`` of the CRDs in ``../shared/kuberay-crds`` (see its README), made as strict as
``kubectl apply`` (which rejects unknown fields). CEL rules (``x-kubernetes-validations``) are not
evaluated. cluster.yaml goes through Ray's own ``prepare_config`` and ``validate_config`` (the
checks of ``ray up`` before it calls a cloud). The strings KubeRay passes on to Ray (the Serve
config) and the job commands are checked with Ray's and rayhash's own parsers. The images the
manifests name are built by infra/docker (tests/test_images.py).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
APP = "/home/ray/rayhash"  # where the images hold the repository (infra/docker's WORKDIR)
MANIFESTS = (
    "raycluster.yaml",
    "rayjob-train.yaml",
    "rayjob-encode.yaml",
    "rayjob-index.yaml",
    "rayservice.yaml",
)
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
CREDENTIAL_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PART_OF = {"app.kubernetes.io/part-of": "rayhash"}  # the label networkpolicy.yaml selects Ray pods by
SEARCH = {**PART_OF, "app.kubernetes.io/component": "search"}  # ... and opens Serve's port on
TOKEN_DIR = "/etc/rayhash/api-token"


def renderer():
    spec = importlib.util.spec_from_file_location("rayhash_infra_render", INFRA / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def values() -> dict[str, str]:
    return renderer().load_values()


def rendered(name: str, overrides: tuple[str, ...] = ()) -> list[dict]:
    r = renderer()
    return [d for d in yaml.safe_load_all(r.render(name, r.load_values(overrides=list(overrides)))) if d is not None]


def ray_version() -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.startswith("ray=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("constraints.txt pins no ray")


def load_manifests() -> list[tuple[str, dict]]:
    return [(name, doc) for name in MANIFESTS for doc in rendered(name)]


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
    docs = rendered(name)
    assert docs, f"{name} holds no document"
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", f"{name}: apiVersion {doc['apiVersion']!r}"
        assert doc["kind"] in CRD_FILES, f"{name}: kind {doc['kind']!r} is not one of {list(CRD_FILES)}"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, f"{name}: top-level keys {sorted(doc)}"
        assert DNS_LABEL.match(doc["metadata"]["name"]), f"{name}: metadata.name is not a DNS label"
        errors = spec_errors(doc["kind"], doc["spec"])
        assert not errors, f"{name} does not match the {doc['kind']} CRD:\n" + "\n".join(errors)


def test_kinds():
    kinds = sorted(doc["kind"] for _, doc in load_manifests())
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob", "RayService"]


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
    "unknown auth mode": lambda s: s["authOptions"].update(mode="password"),
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


# --- rendering: one values file sets the bucket, the checkpoint and the images everywhere ---------


def test_every_template_renders_to_yaml_with_no_placeholder_left(tmp_path):
    r = renderer()
    assert r.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(r.TEMPLATES)
    assert set(r.TEMPLATES) == {p.name for p in INFRA.glob("*.yaml")} - {"values.yaml"}
    for path in tmp_path.iterdir():
        assert "${" not in path.read_text() and list(yaml.safe_load_all(path.read_text())), path.name


def test_set_reaches_every_use():
    bucket, ckpt = "rh-test-bucket", "s3://rh-test-bucket/runs/x/checkpoint_000009"
    sets = ("bucket=rh-test-bucket", f"checkpoint={ckpt}", "image_cpu=r.io/rh:c", "image_gpu=r.io/rh:g")
    docs = {name: rendered(name, sets) for name in MANIFESTS}
    entry = {name: d[0]["spec"]["entrypoint"] for name, d in docs.items() if d[0]["kind"] == "RayJob"}
    assert all(f"s3://{bucket}/" in e for e in entry.values())
    assert f"--checkpoint={ckpt}" in entry["rayjob-encode.yaml"]
    app = serve_config(docs["rayservice.yaml"][0])["applications"][0]["args"]
    assert (app["index"], app["checkpoint"]) == (f"s3://{bucket}/indexes/v1/index_manifest.json", ckpt)
    images = {c["image"] for name in MANIFESTS for _, c in containers(cluster_spec(docs[name][0]))}
    assert images == {"r.io/rh:c", "r.io/rh:g"}
    vm = rendered("cluster.yaml", sets)[0]
    assert (vm["docker"]["image"], vm["available_node_types"]["gpu"]["docker"]["worker_image"]) == (
        "r.io/rh:c",
        "r.io/rh:g",
    )


@pytest.mark.parametrize(
    "argv,error",
    [
        (["--set", "bukket=x"], "'bukket=x'"),
        (["--set", "bucket"], "want key=value"),
        (["nosuch.yaml"], "no template 'nosuch.yaml'"),
    ],
)
def test_render_refuses(argv, error, tmp_path, capsys):
    assert renderer().main([*argv, "--out", str(tmp_path)]) == 2
    assert error in capsys.readouterr().err


def test_a_placeholder_without_a_value_or_a_lone_dollar_is_an_error():
    r = renderer()
    with pytest.raises(r.RenderError, match=r"no value for \$\{bukket\}"):
        r.substitute("s3://${bukket}/x", values(), "t")
    with pytest.raises(r.RenderError, match="Invalid placeholder"):
        r.substitute("cost: 5$", values(), "t")


# --- the pods ---------------------------------------------------------------------------------


def cluster_spec(doc: dict) -> dict:
    return {
        "RayCluster": doc["spec"],
        "RayJob": doc["spec"].get("rayClusterSpec"),
        "RayService": doc["spec"].get("rayClusterConfig"),
    }[doc["kind"]]


def cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for name, doc in load_manifests():
        assert cluster_spec(doc) is not None, f"{name}: no cluster spec (rayClusterSpec / rayClusterConfig)"
        out.append((name, cluster_spec(doc)))
    return out


def pod_groups(cluster: dict) -> list[tuple[str, dict]]:
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]


def containers(cluster: dict) -> list[tuple[str, dict]]:
    return [(group, c) for group, spec in pod_groups(cluster) for c in spec["template"]["spec"]["containers"]]


def is_gpu(container: dict) -> bool:
    return "nvidia.com/gpu" in container["resources"].get("limits", {})


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_pods_run_the_rayhash_images_of_the_pinned_ray():
    version = ray_version()
    for name, cluster in cluster_specs():
        assert cluster["rayVersion"] == version, (
            f"{name}: rayVersion {cluster['rayVersion']}, constraints pin {version}"
        )
        for group, c in containers(cluster):
            want = values()["image_gpu" if is_gpu(c) else "image_cpu"]
            assert c["image"] == want, f"{name} {group}/{c['name']}: image {c['image']}, want {want}"


def test_no_runtime_install():
    for name, doc in load_manifests():
        assert "runtimeEnvYAML" not in doc["spec"], f"{name}: the image holds the code and its stack"
        if doc["kind"] == "RayService":
            for app in serve_config(doc)["applications"]:
                assert "runtime_env" not in app, f"{name}: the image holds the code and its stack"


def test_containers_have_resources_and_s3_settings_where_they_read_s3():
    for name, cluster in cluster_specs():
        for group, c in containers(cluster):
            where = f"{name} {group}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(kind, {})), f"{where}: no cpu/memory {kind}"
            secrets = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
            # The index job's driver only hands the build to its worker: it reads no S3.
            if (name, group) == ("rayjob-index.yaml", "head"):
                assert not secrets and "AWS_REGION" not in env_of(c), f"{where}: needs no S3 settings"
                continue
            assert secrets == ["rayhash-s3"], f"{where}: credentials must come from the Secret rayhash-s3"
            assert env_of(c).get("AWS_REGION", {}).get("value") == values()["region"], f"{where}: AWS_REGION"
        assert cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0", name
        assert "envFrom" not in cluster.get("autoscalerOptions", {}), f"{name}: the autoscaler reads no S3"


def test_heads_take_no_work():
    # What a driver would do itself (index builds, evaluations) goes to workers: rayhash.ray_utils.run_on_worker.
    for name, cluster in cluster_specs():
        assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", name


def test_raycluster_gpu_group_autoscales_from_zero():
    spec = raycluster_spec()
    assert spec["enableInTreeAutoscaling"] is True
    gpu = [g for g in spec["workerGroupSpecs"] if is_gpu(g["template"]["spec"]["containers"][0])]
    assert len(gpu) == 1 and gpu[0]["minReplicas"] == 0 and gpu[0]["maxReplicas"] >= 4  # the header runs 4 GPU workers
    assert len(spec["workerGroupSpecs"]) == 2, "a CPU group and a GPU group"


def test_training_and_the_service_have_gpu_workers():
    docs = dict(load_manifests())
    train = docs["rayjob-train.yaml"]
    assert "--run.use_gpu=true" in train["spec"]["entrypoint"]
    workers = train["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    n = int(re.search(r"--run.num_workers=(\d+)", train["spec"]["entrypoint"]).group(1))
    assert sum(g["replicas"] for g in workers if is_gpu(g["template"]["spec"]["containers"][0])) >= n
    service = docs["rayservice.yaml"]
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert any(is_gpu(g["template"]["spec"]["containers"][0]) for g in groups)
    encoder = serve_config(service)["applications"][0]["args"]["encoder"]
    assert encoder["ray_actor_options"]["num_gpus"] == 1


# --- authentication and who may connect -----------------------------------------------------------


def test_ray_token_auth_on_every_cluster():
    for name, cluster in cluster_specs():
        assert cluster.get("authOptions") == {"mode": "token", "secretName": "rayhash-ray-auth"}, name


def pods(name: str, cluster: dict) -> list[tuple[str, dict]]:
    return [(f"{name} {group}", spec["template"]) for group, spec in pod_groups(cluster)]


def test_the_search_api_takes_its_bearer_token_from_a_mounted_secret():
    for name, cluster in cluster_specs():
        for where, pod in pods(name, cluster):
            serving = name == "rayservice.yaml" and not where.endswith("head")  # ingress replicas run on workers
            for c in pod["spec"]["containers"]:
                env = env_of(c)
                assert "RAYHASH_API_TOKEN" not in env, f"{where}: the token comes from the Secret's file"
                if not serving:
                    assert "RAYHASH_API_TOKEN_FILE" not in env, f"{where}: holds the API token but serves no API"
                    continue
                path = env.get("RAYHASH_API_TOKEN_FILE", {}).get("value", "")
                assert path == f"{TOKEN_DIR}/token", f"{where}: RAYHASH_API_TOKEN_FILE is {path!r}"
                (mount,) = [m for m in c.get("volumeMounts", []) if m["mountPath"] == TOKEN_DIR]
                (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
                assert mount.get("readOnly") and volume["secret"]["secretName"] == "rayhash-api-token", where


def network_policies() -> dict[str, dict]:
    docs = rendered("networkpolicy.yaml")
    assert all(d["apiVersion"] == "networking.k8s.io/v1" and d["kind"] == "NetworkPolicy" for d in docs)
    return {d["metadata"]["name"]: d["spec"] for d in docs}


def test_network_policy_keeps_ray_ports_in_the_namespace():
    policies = network_policies()
    ray = policies["rayhash-ray"]
    assert ray["podSelector"] == {"matchLabels": PART_OF} and ray["policyTypes"] == ["Ingress"]
    for rule in ray["ingress"]:
        assert "ports" not in rule and rule["from"], "each rule names its sources"
        for peer in rule["from"]:
            assert "ipBlock" not in peer and "podSelector" in peer, peer
            if "namespaceSelector" in peer:  # another namespace: the operator's pods only
                assert peer["namespaceSelector"] == {
                    "matchLabels": {"kubernetes.io/metadata.name": values()["operator_namespace"]}
                }
                assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
    (http,) = policies["rayhash-search-http"]["ingress"]
    assert policies["rayhash-search-http"]["podSelector"] == {"matchLabels": SEARCH}
    assert http == {"ports": [{"port": 8000, "protocol": "TCP"}]}, "only Serve's port is open to all"
    # Every Ray pod is selected; Serve's port opens on the search service's pods only, all of whose
    # API-serving pods hold the token.
    for name, cluster in cluster_specs():
        for where, pod in pods(name, cluster):
            labels = pod["metadata"]["labels"]
            assert PART_OF.items() <= labels.items(), f"{where}: not selected by networkpolicy.yaml"
            assert (SEARCH.items() <= labels.items()) == (name == "rayservice.yaml"), where


def literal_credentials(text: str) -> list[str]:
    """AWS access key ids and secret-looking assignments in ``text``."""
    ids = re.findall(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])", text)
    secrets = re.findall(r"(?i)secret_access_key\W{1,4}[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text)
    return ids + secrets


def test_no_literal_credentials():
    assert literal_credentials("AKIA" + "Q" * 16) and literal_credentials("AWS_SECRET_ACCESS_KEY=" + "x/Y+" * 10)
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file() and "rendered" not in p.parts):
        assert literal_credentials(path.read_text()) == [], f"{path.name} holds a literal AWS credential"
    for name, cluster in cluster_specs():
        for group, c in containers(cluster):
            inline = [e["name"] for e in c.get("env", []) if e["name"] in CREDENTIAL_VARS and "value" in e]
            assert not inline, f"{name} {group}: {inline} inline; use the Secret rayhash-s3"


# --- the commands: every job and Serve argument must parse with rayhash's own configs ------------


def in_repo(path: str) -> str:
    """A path in the image (``/home/ray/rayhash/jobs/...``) as the same file of this checkout."""
    return path.removeprefix(APP + "/")


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
    script = in_repo(argv[1])
    assert argv[0] == "python" and (REPO / script).is_file(), f"{where}: {argv[:2]} is not a script of the repo"
    path, overrides, rest = None, [], argv[2:]
    while rest:
        arg = rest.pop(0)
        if arg == "--config":
            path = in_repo(rest.pop(0))
        elif arg.startswith("--config="):
            path = in_repo(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    assert path is None or (REPO / path).is_file(), f"{where}: config {path} not in the repo"
    try:
        config.load(job_config_class(script), str(REPO / path) if path else None, overrides)
    except config.ConfigError as e:
        raise AssertionError(f"{where}: {command!r} does not parse: {e}") from e


def documented_commands(text: str, yaml_comments: bool) -> list[str]:
    """``python jobs/...`` commands (or the image's ``python /home/ray/rayhash/jobs/...``) in a YAML
    file's comments or in a README, continuation lines joined."""
    lines = text.splitlines()
    if yaml_comments:
        lines = [line for line in lines if line.lstrip().startswith("#")]
    flat = re.sub(r"\\\n[#\s]*", " ", "\n".join(lines))
    return re.findall(rf"python ((?:{APP}/)?jobs/\w+\.py(?: +(?:--config +\S+|--[\w.]+=\S+))*)", flat)


def test_job_commands_parse():
    entrypoints = [(n, d["spec"]["entrypoint"]) for n, d in load_manifests() if d["kind"] == "RayJob"]
    scripts = {in_repo(e.split()[1]) for _, e in entrypoints}
    assert scripts == {"jobs/train_dsch.py", "jobs/encode.py", "jobs/build_index.py"}
    for name, command in entrypoints:
        assert command.split()[1].startswith(APP + "/"), f"{name}: run the image's copy, whatever the working dir"
        check_job_command(command, name)
    r = renderer()
    documented = [
        (name, f"python {c}")
        for name in r.TEMPLATES
        for c in documented_commands(r.render(name, values()), yaml_comments=True)
    ]
    documented += [("README.md", f"python {c}") for c in documented_commands((INFRA / "README.md").read_text(), False)]
    assert any("--run.use_gpu=true" in c for _, c in documented), "raycluster.yaml documents the GPU training job"
    assert {in_repo(c.split()[1]) for n, c in documented if n == "README.md"} >= scripts, "README: every job"
    for name, command in documented:
        check_job_command(command, name)
    with pytest.raises(AssertionError, match="numworkers"):
        check_job_command("python jobs/train_dsch.py --config configs/fmnist-dsch-64.yaml --run.numworkers=2", "typo")


def serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def test_serve_config():
    import importlib

    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeDeploySchema

    from rayhash import config
    from rayhash.serve.app import ServeConfig, check_shard_autoscaling

    (doc,) = [d for _, d in load_manifests() if d["kind"] == "RayService"]
    serve = serve_config(doc)
    ServeDeploySchema.model_validate(serve)
    assert serve["http_options"]["host"] == "0.0.0.0", "the proxy must listen beyond the pod"
    (app,) = serve["applications"]
    # The image's installed package, with no working_dir: the same builder as serve/config.yaml's.
    module, attr = app["import_path"].split(":")
    local = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]["import_path"]
    assert module.startswith("rayhash.") and getattr(importlib.import_module(module), attr) is getattr(
        importlib.import_module(local.split(":")[0]), local.split(":")[1]
    )
    vm = renderer().render("serve.yaml", values())
    assert yaml.safe_load(vm) == serve, "serve.yaml (for `ray up` clusters) is rayservice.yaml's serveConfigV2"
    cfg = config.from_dict(ServeConfig, app["args"])  # what Serve's builder does first
    assert cfg.index.endswith("/index_manifest.json") and cfg.checkpoint.startswith("s3://")
    check_shard_autoscaling(cfg)  # a target that load can reach
    for role in ("shards", "ingress", "encoder"):
        options = app["args"][role]
        assert not set(options) - set(DeploymentSchema.model_fields), f"{role}: unknown Serve options"
        assert RayActorOptionsSchema.model_validate(options["ray_actor_options"]).num_cpus > 0, role
        if "autoscaling_config" in options:
            AutoscalingConfig.model_validate(options["autoscaling_config"])
    assert "autoscaling_config" in app["args"]["shards"], "shard deployments autoscale"


# --- cluster.yaml: what `ray up` checks before it calls AWS ----------------------------------------


def vm_config() -> dict:
    (doc,) = rendered("cluster.yaml")
    return doc


def ray_up_checks(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))  # AWS's defaults merged in, as `ray up` does
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation():
    cfg = ray_up_checks(vm_config())
    types = cfg["available_node_types"]
    assert set(types) == {"head", "cpu", "gpu"} and cfg["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0} and types["head"]["max_workers"] == 0
    assert 1 <= types["cpu"]["min_workers"] <= types["cpu"]["max_workers"]
    assert 0 == types["gpu"]["min_workers"] < types["gpu"]["max_workers"]
    assert cfg["max_workers"] >= types["cpu"]["max_workers"] + types["gpu"]["max_workers"]
    assert cfg["docker"]["image"] == values()["image_cpu"]
    assert types["gpu"]["docker"]["worker_image"] == values()["image_gpu"]
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert cfg[key] == [], f"{key}: the image holds everything; nothing is installed at start"


VM_BREAKAGES = {
    "misspelt node-type key": lambda c: renamed(c["available_node_types"]["cpu"], "min_workers", "min_worker"),
    "unknown top-level key": lambda c: c.update(max_worker=3),
    "head type not a node type": lambda c: c.update(head_node_type="main"),
    "more min workers than max_workers": lambda c: c.update(max_workers=0),
    "resources not integers": lambda c: c["available_node_types"]["head"].update(resources={"CPU": "none"}),
}


@pytest.mark.parametrize("breakage", VM_BREAKAGES)
def test_broken_cluster_yaml_fails(breakage):
    cfg = vm_config()
    VM_BREAKAGES[breakage](cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_checks(cfg)
