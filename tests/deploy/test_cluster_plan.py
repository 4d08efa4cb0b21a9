"""The memory plan of a server spanning nodes, and `moa-local plan --k8s`: the lineup as the cluster runs it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from moa_local.cli import main
from moa_local.config import load_config, parse_config
from moa_local.deploy.cluster_plan import _nodes_needed, make_cluster_plan
from moa_local.deploy.plan import GIB, RUNTIME_OVERHEAD_BYTES, make_plan, parse_size

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"


def profile_text(name: str) -> str:
    return (ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8")


def test_llama_405b_parameters_match_the_published_count() -> None:
    plan = make_plan(load_config(ROOT / "configs/gpu-cluster.yaml"), models_dir=MODELS)
    big = next(s for s in plan.servers if s.endpoint == "llama-3.1-405b")
    # per layer: q,o 2*16384^2 + k,v 2*16384*1024 + MLP 3*16384*53248 + 2 norms; 126 layers; untied embeddings
    assert big.params == 126 * 3_187_703_808 + 2 * 128_256 * 16_384 + 16_384 == 405_853_388_800


def test_a_server_over_two_nodes_by_hand() -> None:
    plan = make_plan(load_config(ROOT / "configs/gpu-cluster.yaml"), models_dir=MODELS)
    big = next(s for s in plan.servers if s.endpoint == "llama-3.1-405b")
    assert (big.tensor_parallel, big.pipeline_parallel, big.node) == (8, 2, "2 nodes")
    # bfloat16 weights over 8 GPUs x 2 pipeline stages
    assert big.weight_bytes_per_device == math.ceil(2 * 405_853_388_800 / 16) == 50_731_673_600
    # a stage holds 63 of the 126 layers; each GPU 1 of the 8 KV heads (of 128 values), K and V, 2 bytes
    assert big.kv_bytes_per_token == 2 * 63 * 1 * 128 * 2 == 32_256
    assert big.kv_budget_bytes == int(0.92 * 80 * GIB) - 50_731_673_600 - RUNTIME_OVERHEAD_BYTES
    assert plan.fits, plan.problems
    # A server on nodes of its own claims none of the gateway host's GPUs 0-7.
    assert {name for users in plan.gpu_claims.values() for name, _ in users} == {
        "qwen2-72b", "llama-3.3-70b", "mixtral-8x22b", "dbrx"
    }  # fmt: skip


def test_the_same_model_on_one_node_does_not_fit() -> None:
    one_node = profile_text("gpu-cluster").replace("      nodes: 2 ", "      nodes: 1 ")
    problems = make_plan(parse_config(one_node), models_dir=MODELS).problems
    assert [p for p in problems if p.startswith("llama-3.1-405b: does not fit: 94.5 GiB of weights per GPU")]


@pytest.mark.parametrize("gpu_memory", ["80GiB", "81559MiB"])
def test_cluster_profile_fits_three_nodes_of_eight_gpus(gpu_memory: str) -> None:
    placed = make_cluster_plan(
        load_config(ROOT / "configs/gpu-cluster.yaml"), gpu_memory_bytes=parse_size(gpu_memory), models_dir=MODELS
    )
    assert placed.fits, placed.plan.problems
    assert sorted(pod.gpus for pod in placed.pods) == [2, 2, 2, 2, 8, 8]
    assert (placed.gpus, placed.nodes_needed, placed.gateway_replicas) == (24, 3, (2, 4))
    assert placed.plan.gpu_claims == {}  # each pod's GPUs are its own


def test_gpus_shared_on_one_host_become_a_gpu_each_in_the_cluster() -> None:
    placed = make_cluster_plan(load_config(ROOT / "configs/gpu-small.yaml"), models_dir=MODELS)
    assert placed.fits and (placed.gpus, placed.nodes_needed) == (3, 1)
    assert placed.unshared == ("qwen2.5-7b", "llama-3.1-8b", "mistral-7b")
    # Over-subscribing the shared GPU is a problem on one host, and none in the cluster.
    shared = profile_text("gpu-small").replace("gpu_memory_utilization: 0.33", "gpu_memory_utilization: 0.5")
    assert not make_plan(parse_config(shared), models_dir=MODELS).fits
    assert make_cluster_plan(parse_config(shared), models_dir=MODELS).fits


def test_a_pod_larger_than_a_node_and_an_undividable_concurrency_are_problems() -> None:
    text = profile_text("gpu-cluster").replace("  gpus_per_node: 8", "  gpus_per_node: 4")
    text = text.replace("max_concurrency: 32", "max_concurrency: 3", 1)
    placed = make_cluster_plan(parse_config(text), models_dir=MODELS)
    assert placed.plan.problems == (
        "llama-3.1-405b: a pod asks for 8 GPUs, more than a node's 4 (k8s.gpus_per_node); "
        "spread it over nodes with serve.nodes and fewer gpus each",
        "endpoints.mixtral-8x22b.max_concurrency: 3 cannot be divided over up to 4 gateway replicas: "
        "each keeps 1, so 4 calls reach it at once",
    )


@pytest.mark.parametrize(
    ("pods", "per_node", "nodes"),
    [([8, 8, 2, 2, 2, 2], 8, 3), ([5, 5, 5], 8, 3), ([4, 4, 4, 4], 8, 2), ([6, 2, 6, 2], 8, 2), ([], 8, 0),
     ([16, 1], 8, 2)],
)  # fmt: skip
def test_nodes_needed_packs_largest_first(pods: list[int], per_node: int, nodes: int) -> None:
    assert _nodes_needed(pods, per_node) == nodes


def test_cli_plan_k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    args = ["plan", "--config", "configs/gpu-cluster.yaml", "--models-dir", str(MODELS), "--k8s"]
    ok = CliRunner().invoke(main, args)
    assert ok.exit_code == 0, ok.output
    assert "llama-3.1-405b  k8s, 2 pods  8 GPUs   8x2" in ok.output
    assert (
        "Kubernetes: 6 engine pod(s) asking for 24 GPU(s) in all, they fit on 3 node(s) of 8 GPUs; "
        "gateway 2-4 replicas, each endpoint's max_concurrency divided by 4." in ok.output
    )
    assert ok.output.rstrip().endswith("Fits: no problems found.")
    small = tmp_path / "small.yaml"
    small.write_text(profile_text("gpu-cluster").replace("  gpus_per_node: 8", "  gpus_per_node: 4"), encoding="utf-8")
    bad = CliRunner().invoke(main, [*args[:2], str(small), *args[3:]])
    assert bad.exit_code == 1
    assert bad.output.rstrip().splitlines()[-1] == f"Error: {small}: 1 problem(s); see above"
