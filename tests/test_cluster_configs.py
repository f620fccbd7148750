"""cluster/: the launcher config passes Ray's own validation, the KubeRay manifests carry what
KubeRay needs, the image recipe matches the pins -- checked by code, without AWS, Kubernetes or
Docker (none of them is reachable here).

KubeRay's CRD schemas are not available offline, so the RayCluster/RayJob structure is checked
explicitly, and each cluster spec is also fed to the function Ray's KubeRay autoscaler uses to
read a RayCluster (`_derive_autoscaling_config_from_ray_cr`), which validates the result with
Ray's cluster-config schema.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
AWS_YAML = CLUSTER / "aws.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
README = CLUSTER / "README.md"

NAMESPACE = "samsp"
RAY_SA = "samsp-ray"
IMAGE_HOME = "/home/ray/samsp"  # WORKDIR of cluster/Dockerfile; entrypoints use absolute paths


# --------------------------------------------------------------------------- pins

def _pin(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==([^\s;#]+)", line.strip(), re.IGNORECASE)
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def _python_version() -> str:
    """'3.11': from the constraints header ('Verified together on Python 3.11'), else this venv."""
    m = re.search(r"Python (\d+)\.(\d+)", (REPO / "constraints.txt").read_text())
    return f"{m.group(1)}.{m.group(2)}" if m else f"{sys.version_info[0]}.{sys.version_info[1]}"


RAY_VERSION = _pin("ray")
PY_TAG = "py" + _python_version().replace(".", "")           # py311
RAY_GPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"  # the official image we build on
SAMSP_TAG_SUFFIX = f"-ray{RAY_VERSION}-{PY_TAG}"              # our image's tag names both


# --------------------------------------------------------------------------- loading

def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert isinstance(d, dict), f"{path.name}: a document is not a mapping"
    return docs


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d.get("kind") == kind
             and (name is None or d["metadata"].get("name") == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _all_k8s_docs() -> dict[str, list[dict]]:
    return {p.name: _docs(p) for p in sorted(KUBERAY.glob("*.yaml"))}


@pytest.fixture(scope="module")
def aws_raw() -> dict:
    return yaml.safe_load(AWS_YAML.read_text())


@pytest.fixture(scope="module")
def aws_prepared(aws_raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(aws_raw))  # merges Ray's AWS defaults; no AWS call
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    return _all_k8s_docs()


@pytest.fixture(scope="module")
def nightly(k8s) -> dict:
    docs = k8s["rayjob-segment-nightly.yaml"]
    cron = _one(docs, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The CronJob's pod runs `kubectl create -f <mounted template>`: find that template.
    argv = list(container.get("command", [])) + list(container.get("args", []))
    assert argv[:3] == ["kubectl", "create", "-f"], argv
    template_path = Path(argv[3])
    mount = next(m for m in container["volumeMounts"]
                 if template_path.parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = _one(docs, "ConfigMap", volume["configMap"]["name"])
    rayjob = yaml.safe_load(cm["data"][template_path.name])
    return {"docs": docs, "cron": cron, "pod": pod, "rayjob": rayjob}


def _rayjob_train(k8s) -> dict:
    return _one(k8s["rayjob-train.yaml"], "RayJob")


def _ray_cluster_specs(k8s, nightly) -> dict[str, dict]:
    """Every RayCluster spec we ship: the standalone cluster and the two RayJobs' clusters."""
    return {
        "raycluster.yaml": _one(k8s["raycluster.yaml"], "RayCluster")["spec"],
        "rayjob-train.yaml": _rayjob_train(k8s)["spec"]["rayClusterSpec"],
        "rayjob-segment-nightly.yaml": nightly["rayjob"]["spec"]["rayClusterSpec"],
    }


def _containers(spec: dict):
    yield "head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]["spec"]
    for g in spec["workerGroupSpecs"]:
        yield g["groupName"], g, g["template"]["spec"]


def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _validate_config(kind: str, yaml_text: str | None, overrides: list[str]) -> None:
    """Validate a config (YAML text and/or --set overrides) against the job's pydantic model."""
    mod_name, cls_name = {"segment": ("jobs.segmentation.config", "SegmentConfig"),
                          "train": ("jobs.training.config", "TrainConfig")}[kind]
    try:
        import importlib

        model = getattr(importlib.import_module(mod_name), cls_name)
        from jobs.runtime.config import _set_dotted, parse_overrides
    except (ImportError, AttributeError) as exc:  # the job module is not there (yet)
        pytest.skip(f"{mod_name}.{cls_name} not importable: {exc}")
    tree = yaml.safe_load(yaml_text) if yaml_text else {}
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    return model.model_validate(tree)


# --------------------------------------------------------------------------- everything parses

def test_every_cluster_file_parses():
    yamls = sorted(CLUSTER.rglob("*.yaml"))
    assert AWS_YAML in yamls and len(yamls) >= 5
    for path in yamls:
        assert _docs(path), f"{path} is empty"
    for path in sorted((CLUSTER / "iam").glob("*.json")):
        policy = json.loads(path.read_text())
        assert policy["Version"] == "2012-10-17" and policy["Statement"], path.name


def test_no_credentials_in_cluster_files():
    key_id = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        text = path.read_text()
        assert not key_id.search(text), f"{path}: looks like an AWS access key id"
        assert not re.search(r"aws_secret_access_key\s*[=:]\s*\S", text, re.IGNORECASE), path
        if path.suffix in (".yaml", ".json") or path.name.startswith("Dockerfile"):
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
                assert var not in text, f"{path}: sets {var}; credentials come from roles"
    for name, docs in _all_k8s_docs().items():
        assert not [d for d in docs if d["kind"] == "Secret"], f"{name}: ships a Secret"


# --------------------------------------------------------------------------- aws.yaml

def test_aws_yaml_passes_ray_schema_as_written(aws_raw):
    from ray.autoscaler._private.util import validate_config

    validate_config(copy.deepcopy(aws_raw))


def test_aws_yaml_passes_ray_prepare_and_validate(aws_prepared):
    # prepare_config = what `ray up` does before touching AWS (defaults, docker, min/max).
    types = aws_prepared["available_node_types"]
    assert aws_prepared["head_node_type"] in types
    assert types[aws_prepared["head_node_type"]]["max_workers"] == 0
    assert sum(t["min_workers"] for t in types.values()) <= aws_prepared["max_workers"]


def test_aws_bootstrap_steps_that_need_no_aws(aws_prepared, monkeypatch):
    """The instance profile is taken from the config (Ray creates no role), and Ray keeps the
    image we name instead of its default AMI (an Ubuntu 18.04 DLAMI whose driver predates the
    CUDA 13 torch build)."""
    from ray.autoscaler._private.aws import config as aws_config

    def no_aws(*args, **kwargs):
        raise AssertionError("tried to reach AWS")

    monkeypatch.setattr(aws_config, "_client", no_aws)
    monkeypatch.setattr(aws_config, "_resource", no_aws)
    cfg = copy.deepcopy(aws_prepared)
    cfg["head_node"] = {}
    assert aws_config._configure_iam_role(cfg) is cfg
    named = {k: v["node_config"].get("ImageId") for k, v in cfg["available_node_types"].items()}
    aws_config._check_ami(cfg)
    for name, node_type in cfg["available_node_types"].items():
        image = node_type["node_config"]["ImageId"]
        assert image == named[name] and image not in aws_config.DEFAULT_AMI.values(), name


def test_aws_gpu_nodes_run_an_image_with_a_cuda_13_driver(aws_raw):
    """Every node names its image (no Ray default): AWS's Deep Learning Base OSS Nvidia Driver
    AMI through its public SSM parameter (resolved by EC2 at launch), or a frozen ami-... of it.
    The driver requirement itself is checked on a GPU (bench/gpu_check.sh, nvidia-smi)."""
    dlami = re.compile(r"resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
                       r"base-oss-nvidia-driver-gpu-ubuntu-2[24]\.04/latest/ami-id")
    for name, node_type in aws_raw["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        assert dlami.fullmatch(image) or re.fullmatch(r"ami-[0-9a-f]{8,17}", image), (name, image)
    readme = README.read_text()
    assert "580" in readme and "TORCH_INDEX_URL" in readme and "CudaUnavailableError" in readme


def test_aws_node_types(aws_raw):
    types = aws_raw["available_node_types"]
    head = types[aws_raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "keep tasks/actors off the head"
    workers = {k: v for k, v in types.items() if k != aws_raw["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    cpu = [v for v in workers.values() if not v["resources"].get("GPU")]
    assert gpu and all(v["max_workers"] >= 1 and v["resources"]["CPU"] >= 2 for v in gpu)
    assert cpu and all(v["max_workers"] >= 1 and v["resources"]["CPU"] >= 1 for v in cpu)
    assert all(v.get("min_workers", 0) == 0 for v in workers.values()), "scale from zero"
    # S3 through instance profiles: the head's (EC2 + PassRole) differs from the workers'.
    head_profile = head["node_config"]["IamInstanceProfile"]["Name"]
    worker_profiles = {v["node_config"]["IamInstanceProfile"]["Name"] for v in workers.values()}
    assert head_profile not in worker_profiles and len(worker_profiles) == 1


def test_aws_image_auth_and_region(aws_raw):
    docker = aws_raw["docker"]
    assert docker["image"] == RAY_GPU_IMAGE
    opts = " ".join(docker["run_options"])
    assert "RAY_AUTH_MODE=token" in opts
    assert f"AWS_REGION={aws_raw['provider']['region']}" in opts
    assert aws_raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_aws_installs_samsp_with_constraints(aws_prepared):
    commands = [c for key in ("initialization_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands",
                              "worker_start_ray_commands") for c in aws_prepared[key]]
    pip = [c for c in commands if re.search(r"\bpip3? install\b", c)]
    assert pip, "nothing installs samsp"
    for c in pip:
        assert re.search(r"(-c|--constraint)\s+\S*constraints\.txt", c), f"unpinned: {c}"
    assert any(re.search(r"install\b.*\s~/samsp\s*$", c) for c in pip)
    assert any("boto3" in c for c in aws_prepared["head_setup_commands"])
    mounts = aws_prepared["file_mounts"]
    assert any(local == "./constraints.txt" for local in mounts.values())


def test_aws_file_mounts_are_small_repo_paths(aws_raw):
    total = 0
    for remote, local in aws_raw["file_mounts"].items():
        if local.startswith("~"):
            continue  # the user's own token, not in the repo
        path = (REPO / local).resolve()
        assert path.exists(), f"file_mounts {remote}: {local} missing (run `ray up` from the repo root)"
        assert path != REPO and ".venv" not in path.parts and REPO in path.parents
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    assert total < 64 * 2**20, f"file_mounts carry {total / 2**20:.0f} MiB"


def test_aws_dashboard_and_ports_not_public(aws_raw):
    head_start = " ".join(aws_raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    rules = aws_raw["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        open_world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))
        assert not open_world or rule.get("FromPort") == rule.get("ToPort") == 22, rule


def test_iam_policies_match_aws_yaml(aws_raw):
    head_policy = json.loads((CLUSTER / "iam" / "ray-head-ec2-policy.json").read_text())
    passrole = [s for s in head_policy["Statement"] if "iam:PassRole" in s["Action"]]
    assert len(passrole) == 1
    resources = passrole[0]["Resource"]
    workers = {v["node_config"]["IamInstanceProfile"]["Name"]
               for k, v in aws_raw["available_node_types"].items()
               if k != aws_raw["head_node_type"]}
    for name in workers:  # role and instance profile share the name (see README)
        assert any(r.endswith(f":role/{name}") for r in resources), name
    assert not any(r == "*" for r in resources), "PassRole on * lets the head escalate"


# --------------------------------------------------------------------------- KubeRay

def test_manifest_kinds_and_namespace(k8s):
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in k8s.items()}
    assert "RayCluster" in kinds["raycluster.yaml"]
    assert "RayJob" in kinds["rayjob-train.yaml"]
    assert "CronJob" in kinds["rayjob-segment-nightly.yaml"]
    assert _one(k8s["serviceaccount.yaml"], "Namespace")["metadata"]["name"] == NAMESPACE
    for name, docs in k8s.items():
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), name
            if d["kind"] in ("RayCluster", "RayJob"):
                assert d["apiVersion"] == "ray.io/v1", (name, d["kind"])
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == NAMESPACE, (name, d["metadata"]["name"])
            assert d["kind"] not in ("Ingress",), f"{name}: exposes the cluster"


def test_ray_cluster_specs_have_what_kuberay_needs(k8s, nightly):
    for where, spec in _ray_cluster_specs(k8s, nightly).items():
        assert spec["rayVersion"] == RAY_VERSION, where
        assert spec.get("authOptions", {}).get("mode") == "token", where
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head service exposed"
        assert not head.get("enableIngress", False), where
        assert head["rayStartParams"].get("num-cpus") == "0", where
        assert isinstance(spec["workerGroupSpecs"], list) and spec["workerGroupSpecs"], where
        names = [g["groupName"] for g in spec["workerGroupSpecs"]]
        assert len(set(names)) == len(names), where
        images, gpu_groups, cpu_groups = set(), [], []
        for group_name, group, pod in _containers(spec):
            at = f"{where}:{group_name}"
            assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), at
            assert pod.get("serviceAccountName") == RAY_SA, f"{at}: S3 comes from the IRSA account"
            container = pod["containers"][0]
            assert container.get("name") and container.get("image"), at
            images.add(container["image"])
            res = container["resources"]
            for key in ("cpu", "memory"):
                assert key in res["limits"] and key in res["requests"], f"{at}: {key}"
            if group is not head:
                assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], at
                if _gpus(container):
                    assert res["requests"].get("nvidia.com/gpu") == res["limits"]["nvidia.com/gpu"], at
                    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), at
                    gpu_groups.append(group_name)
                else:
                    cpu_groups.append(group_name)
            else:
                assert not _gpus(container), f"{at}: no GPU on the head"
        assert gpu_groups, f"{where}: no worker group with nvidia.com/gpu limits"
        if where != "rayjob-train.yaml":
            assert cpu_groups, f"{where}: no CPU worker group for reads"
        assert len(images) == 1, f"{where}: head and workers must run one image: {images}"
        (image,) = images
        assert image.rsplit(":", 1)[1].endswith(SAMSP_TAG_SUFFIX), f"{where}: {image}"


def test_ray_cluster_specs_pass_ray_kuberay_autoscaler_config(k8s, nightly):
    """Ray's KubeRay autoscaler reads each group's Ray resources from the CR and validates the
    result against Ray's cluster schema; GPU groups must come out with GPU resources."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (_derive_autoscaling_config_from_ray_cr)

    for where, spec in _ray_cluster_specs(k8s, nightly).items():
        derived = _derive_autoscaling_config_from_ray_cr(
            {"metadata": {"name": "samsp", "namespace": NAMESPACE}, "spec": copy.deepcopy(spec)})
        types = derived["available_node_types"]
        assert types["headgroup"]["resources"]["CPU"] == 0, where
        for group in spec["workerGroupSpecs"]:
            res = types[group["groupName"]]["resources"]
            assert res.get("GPU", 0) == _gpus(group["template"]["spec"]["containers"][0]), where
            assert res["CPU"] >= 1, where


def test_same_image_everywhere_and_dockerfile_workdir(k8s, nightly):
    images = set()
    for spec in _ray_cluster_specs(k8s, nightly).values():
        images |= {pod["containers"][0]["image"] for _, _, pod in _containers(spec)}
    for c in nightly["rayjob"]["spec"]["submitterPodTemplate"]["spec"]["containers"]:
        images.add(c["image"])
    assert len(images) == 1, images
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert workdirs[-1] == IMAGE_HOME


def _entrypoint_argv(entrypoint: str, script: str) -> list[str]:
    assert "$(" not in entrypoint and "`" not in entrypoint, "no command substitution"
    assert not re.search(r"[;&|<>]", entrypoint), "the submitter's shell would split it"
    argv = shlex.split(entrypoint)
    assert argv[0] == "python" and argv[1] == f"{IMAGE_HOME}/{script}", argv
    assert (REPO / script).parent.is_dir()
    return argv


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _mounted_config_text(docs: list[dict], pod: dict, path: str) -> str:
    """The text of `path` inside the head pod: a ConfigMap key mounted by a volume."""
    container = pod["containers"][0]
    mount = next(m for m in container.get("volumeMounts", [])
                 if Path(path).parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = _one(docs, "ConfigMap", volume["configMap"]["name"])
    return cm["data"][Path(path).name]


def test_train_rayjob(k8s):
    job = _rayjob_train(k8s)
    spec = job["spec"]
    argv = _entrypoint_argv(spec["entrypoint"], "jobs/train.py")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    text = _mounted_config_text(k8s["rayjob-train.yaml"], head_pod, _flag(argv, "--config"))
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = _validate_config("train", text, overrides)
    assert cfg.run.storage_path.startswith("s3://"), "checkpoints must outlive the RayJob's cluster"
    assert cfg.run.max_failures != 0, "a lost worker pod must not end the run"
    if cfg.scaling.use_gpu:
        gpus = sum(g["replicas"] * _gpus(g["template"]["spec"]["containers"][0])
                   for g in spec["rayClusterSpec"]["workerGroupSpecs"])
        assert cfg.scaling.num_workers <= gpus


def _worker_groups(aws_raw, k8s, nightly) -> dict[str, dict[str, dict]]:
    """Per cluster file, its worker groups as Ray sees them: ``{"CPU", "GPU", "max"}`` (Ray
    resources of one node and the most nodes the group scales to). KubeRay groups go through
    Ray's own reading of the CR (rayStartParams first, else the container limits)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (_derive_autoscaling_config_from_ray_cr)

    def group(resources: dict, most: int) -> dict:
        return {"CPU": float(resources.get("CPU", 0)), "GPU": float(resources.get("GPU", 0)),
                "max": int(most)}

    clusters = {"aws.yaml": {
        name: group(t["resources"], min(t["max_workers"], aws_raw["max_workers"]))
        for name, t in aws_raw["available_node_types"].items()
        if name != aws_raw["head_node_type"]}}
    for where, spec in _ray_cluster_specs(k8s, nightly).items():
        derived = _derive_autoscaling_config_from_ray_cr(
            {"metadata": {"name": "samsp", "namespace": NAMESPACE}, "spec": copy.deepcopy(spec)})
        clusters[where] = {g["groupName"]: group(derived["available_node_types"][g["groupName"]]
                                                 ["resources"], g["maxReplicas"])
                           for g in spec["workerGroupSpecs"]}
    return clusters


def _workers_that_fit(scaling, group: dict) -> int:
    """Ray Train workers (``cpus_per_worker`` CPUs, one GPU with ``use_gpu``) the group holds
    at its largest: a worker lives on one node, so a node's leftover CPUs do not add up."""
    per_node = int(group["CPU"] // scaling.cpus_per_worker)
    if scaling.use_gpu:
        per_node = min(per_node, int(group["GPU"]))
    return per_node * group["max"]


def _train_targets(cfg, clusters: dict) -> list[tuple[str, str, dict]]:
    """The worker groups a training config is meant for: GPU configs the GPU groups of every
    cluster that trains (the standalone RayCluster, the launcher's, the training RayJob's), CPU
    configs the CPU groups. The nightly segmentation cluster does not train."""
    return [(where, name, g) for where, groups in clusters.items()
            if where != "rayjob-segment-nightly.yaml" for name, g in groups.items()
            if (g["GPU"] >= 1) == cfg.scaling.use_gpu]


def test_training_configs_fit_their_worker_groups(aws_raw, k8s, nightly):
    """Every shipped training config (configs/train_*.yaml and the RayJob's own) can be placed
    on each worker group it is meant for: num_workers x (cpus_per_worker CPU [+ 1 GPU]) within
    the group's max replicas. A worker asking more CPUs than a node has waits forever."""
    clusters = _worker_groups(aws_raw, k8s, nightly)
    configs = {p.name: _validate_config("train", p.read_text(), [])
               for p in sorted((REPO / "configs").glob("train_*.yaml"))}
    assert len(configs) >= 3 and any(c.scaling.use_gpu for c in configs.values())
    job = _rayjob_train(k8s)["spec"]
    argv = _entrypoint_argv(job["entrypoint"], "jobs/train.py")
    head_pod = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    rayjob_cfg = _validate_config(
        "train", _mounted_config_text(k8s["rayjob-train.yaml"], head_pod, _flag(argv, "--config")),
        [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
    checked = 0
    for name, cfg in configs.items():
        targets = _train_targets(cfg, clusters)
        assert targets, f"{name}: no worker group of its kind"
        for where, group_name, group in targets:
            fits = _workers_that_fit(cfg.scaling, group)
            assert fits >= cfg.scaling.num_workers, (
                f"{name}: {cfg.scaling.num_workers} worker(s) x {cfg.scaling.cpus_per_worker:g} "
                f"CPU{' + 1 GPU' if cfg.scaling.use_gpu else ''} do not fit {where}:{group_name} "
                f"({group['max']} x {group['CPU']:g} CPU, {group['GPU']:g} GPU): room for {fits}")
            checked += 1
    rayjob_groups = clusters["rayjob-train.yaml"]
    assert sum(_workers_that_fit(rayjob_cfg.scaling, g) for g in rayjob_groups.values()
               if (g["GPU"] >= 1) == rayjob_cfg.scaling.use_gpu) >= rayjob_cfg.scaling.num_workers
    assert checked >= 5


def test_worker_fit_arithmetic():
    from types import SimpleNamespace as NS

    gpu_pod = {"CPU": 3.0, "GPU": 1.0, "max": 8}
    assert _workers_that_fit(NS(cpus_per_worker=4, use_gpu=True), gpu_pod) == 0  # issue 19 item 4
    assert _workers_that_fit(NS(cpus_per_worker=3, use_gpu=True), gpu_pod) == 8
    assert _workers_that_fit(NS(cpus_per_worker=1, use_gpu=True), gpu_pod) == 8  # one GPU a node
    assert _workers_that_fit(NS(cpus_per_worker=2, use_gpu=False), {"CPU": 7.0, "GPU": 0.0,
                                                                    "max": 4}) == 12


_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _valid_cron(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, _CRON_RANGES):
        for item in field.split(","):
            m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", item)
            if not m:
                return False
            nums = [int(x) for x in (m.group(2), m.group(3)) if x is not None]
            if any(not lo <= n <= hi for n in nums) or (m.group(4) and int(m.group(4)) < 1):
                return False
    return True


def test_cron_validator_itself():
    assert _valid_cron("0 2 * * *") and _valid_cron("*/15 0-6 1,15 * 1-5")
    assert not _valid_cron("0 2 * *") and not _valid_cron("60 2 * * *") and not _valid_cron("x * * * *")


def test_nightly_cronjob_creates_a_rayjob(nightly):
    cron = nightly["cron"]
    assert cron["apiVersion"] == "batch/v1"
    assert _valid_cron(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    rayjob = nightly["rayjob"]
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["generateName"] and "name" not in rayjob["metadata"]
    assert rayjob["metadata"]["namespace"] == NAMESPACE
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["activeDeadlineSeconds"] < 24 * 3600, "a run must end before the next night"
    # The scheduler's account may create RayJobs (and nothing broader).
    docs = nightly["docs"]
    sa = nightly["pod"]["serviceAccountName"]
    binding = next(d for d in docs if d["kind"] == "RoleBinding"
                   and any(s["name"] == sa for s in d["subjects"]))
    role = _one(docs, "Role", binding["roleRef"]["name"])
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
               for r in role["rules"])
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in role["rules"])


def test_nightly_parameters_reach_the_entrypoint(nightly):
    spec = nightly["rayjob"]["spec"]
    argv = _entrypoint_argv(spec["entrypoint"], "jobs/segment.py")
    for flag in ("--output", "--model", "--config"):
        assert flag in argv
    params_cm = _one(nightly["docs"], "ConfigMap", "samsp-nightly-params")
    used = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", spec["entrypoint"])
    assert {"SAMSP_OUTPUT", "SAMSP_MODEL"} <= set(used)
    assert set(used) <= set(params_cm["data"]), "every ${VAR} must be a parameter"
    for prefix in ("SAMSP_OUTPUT", "SAMSP_MODEL"):
        assert params_cm["data"][prefix].strip()

    def env_from(container):
        return {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}

    # K8sJobMode: the submitter's bash expands ${VAR}; HTTPMode: the head's shell does.
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "samsp-nightly-params" in env_from(submitter)
    assert "samsp-nightly-params" in env_from(head)
    assert not submitter.get("command"), "KubeRay fills in the submit command"


def test_nightly_segment_config_fits_the_cluster(nightly):
    spec = nightly["rayjob"]["spec"]
    argv = _entrypoint_argv(spec["entrypoint"], "jobs/segment.py")
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    text = _mounted_config_text(nightly["docs"], head_pod, _flag(argv, "--config"))
    cfg = _validate_config("segment", text, [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * _gpus(g["template"]["spec"]["containers"][0]) for g in groups)
    cpus = sum(g["replicas"] * float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               for g in groups)
    num_gpus = cfg.predict.num_gpus or 1.0
    assert cfg.predict.num_actors >= 1, "autoscaling-proof: no 'auto' actor count"
    assert cfg.predict.num_actors * num_gpus <= gpus
    # Actors must leave CPUs to the read/write tasks (else the pipeline starves).
    assert cfg.predict.num_actors * cfg.predict.num_cpus + cfg.pipeline.read_cpus <= cpus


def test_nightly_searches_stac_since_the_last_run(nightly):
    """The nightly scenes come from a STAC search in the mounted config (no --input): the one
    of configs/segment_stac.yaml, whose window starts where the last successful night ended."""
    spec = nightly["rayjob"]["spec"]
    argv = _entrypoint_argv(spec["entrypoint"], "jobs/segment.py")
    assert "--input" not in argv and "--stac" not in argv
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    cfg = _validate_config("segment", _mounted_config_text(nightly["docs"], head_pod,
                                                           _flag(argv, "--config")), [])
    assert cfg.input.stac is not None and cfg.input.stac.datetime == "since-last-run"
    example = _validate_config("segment", (REPO / "configs" / "segment_stac.yaml").read_text(), [])
    assert cfg.input.stac == example.input.stac


def test_irsa_service_account_and_trust_policy(k8s):
    sa = _one(k8s["serviceaccount.yaml"], "ServiceAccount", RAY_SA)
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
    trust = json.loads((CLUSTER / "iam" / "irsa-trust-policy.json").read_text())
    (stmt,) = trust["Statement"]
    assert stmt["Action"] == "sts:AssumeRoleWithWebIdentity"
    subs = [v for k, v in stmt["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert subs == [f"system:serviceaccount:{NAMESPACE}:{RAY_SA}"]


# --------------------------------------------------------------------------- Dockerfile

def test_dockerfile_matches_pins():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms == [RAY_GPU_IMAGE], froms
    # Every pip install resolves against constraints.txt (the TORCH_INDEX_URL branch installs
    # exactly the torch/torchvision pins read from it).
    runs = re.split(r"\n(?=[A-Z]+\s)", text.replace("\\\n", " "))
    pip = [seg for run in runs if run.startswith("RUN")
           for seg in re.split(r"&&|;", run) if re.search(r"\bpip3? install\b", seg)]
    assert pip
    for seg in pip:
        assert "-c constraints.txt" in seg or "constraints.txt)" in seg, seg
    # What the image copies is what its ignore file lets through, and the files exist.
    sources = [s for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", text, re.MULTILINE)
               for s in line.split()[:-1]]
    allowed = {l.strip().lstrip("!").rstrip("/") for l in
               (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
               if l.strip().startswith("!")}
    for src in sources:
        assert src.rstrip("/") in allowed, f"{src} is excluded by Dockerfile.dockerignore"
        if "." in Path(src).name:
            assert (REPO / src).is_file(), src


# --------------------------------------------------------------------------- README

def _readme_commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]


def test_readme_covers_running_on_a_cluster():
    text = README.read_text()
    assert text.lstrip().startswith("## Running on a cluster")
    for needle in ("ray up cluster/aws.yaml", "ray dashboard cluster/aws.yaml", "ray job submit",
                   "--working-dir .", "ray job logs", "kubectl apply", "port-forward",
                   "manifest.jsonl", "IRSA", "instance profile", "RAY_AUTH_MODE=token",
                   "cluster/Dockerfile", "num_actors", "batch_size", "read_cpus"):
        assert needle in text, needle


def test_readme_overrides_are_valid_config_keys():
    """Every `--set key=value` in the README's segment/train commands validates."""
    checked = 0
    for cmd in _readme_commands():
        kind = "segment" if "jobs/segment.py" in cmd else "train" if "jobs/train.py" in cmd else None
        if kind is None:
            continue
        argv = shlex.split(cmd)
        overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        if overrides:
            _validate_config(kind, None, overrides)
            checked += 1
    assert checked >= 2
