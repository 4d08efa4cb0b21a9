"""The memory plan for the Kubernetes case: the same lineup, placed as pods on GPU nodes.

`moa-local k8s` runs each engine as pods that ask for whole GPUs
(`nvidia.com/gpu` = tensor parallel size; a server spanning N nodes is N
pods), so engines that share a GPU by index on one host get GPUs of their own
in the cluster. `make_cluster_plan` takes the memory plan in that form
(`plan.make_plan(cluster=True)`) and adds what only the cluster can get wrong:
a pod asking for more GPUs than a node has (it would never schedule), and an
endpoint's `max_concurrency` too small to divide over the gateway's replicas.
It also counts the pods, the GPUs and the nodes of `k8s.gpus_per_node` GPUs
they fit on (packed largest first: a placement that exists, so the scheduler
needs no more nodes than that, given them free).

Left out: what the cluster has free right now; that is the scheduler's business.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from moa_local.config import Config
from moa_local.deploy.plan import DEFAULT_GPU_MEMORY, Plan, make_plan, render_plan


@dataclass(frozen=True)
class EnginePod:
    endpoint: str
    gpus: int


@dataclass(frozen=True)
class ClusterPlan:
    plan: Plan  # the memory plan, its problems and the cluster's together
    pods: tuple[EnginePod, ...]
    gpus_per_node: int
    nodes_needed: int
    gateway_replicas: tuple[int, int]  # the autoscaler's floor and ceiling
    unshared: tuple[str, ...] = ()  # endpoints sharing GPUs by index on one host, which the cluster cannot do

    @property
    def fits(self) -> bool:
        return self.plan.fits

    @property
    def gpus(self) -> int:
        return sum(pod.gpus for pod in self.pods)


def make_cluster_plan(
    config: Config,
    *,
    gpu_memory_bytes: int = DEFAULT_GPU_MEMORY,
    models_dir: str | Path | None = None,
    prompt_tokens: int = 1024,
) -> ClusterPlan:
    plan = make_plan(
        config, gpu_memory_bytes=gpu_memory_bytes, models_dir=models_dir, prompt_tokens=prompt_tokens, cluster=True
    )
    k8s = config.k8s
    pods: list[EnginePod] = []
    problems: list[str] = []
    for name, endpoint in config.endpoints.items():
        serve = endpoint.serve
        if serve is None:
            continue
        if serve.engine != "vllm":
            problems.append(f"{name}: the cluster runs GPU engines (vllm), not '{serve.engine}'")
            continue
        pods += [EnginePod(name, serve.tensor_parallel)] * serve.pipeline_parallel
        if serve.tensor_parallel > k8s.gpus_per_node:
            problems.append(
                f"{name}: a pod asks for {serve.tensor_parallel} GPUs, more than a node's {k8s.gpus_per_node} "
                "(k8s.gpus_per_node); spread it over nodes with serve.nodes and fewer gpus each"
            )
    for name, endpoint in config.endpoints.items():
        if endpoint.max_concurrency < k8s.max_replicas:
            problems.append(
                f"endpoints.{name}.max_concurrency: {endpoint.max_concurrency} cannot be divided over up to "
                f"{k8s.max_replicas} gateway replicas: each keeps 1, so {k8s.max_replicas} calls reach it at once"
            )
    return ClusterPlan(
        plan=replace(plan, problems=(*plan.problems, *problems)),
        pods=tuple(pods),
        gpus_per_node=k8s.gpus_per_node,
        nodes_needed=_nodes_needed([pod.gpus for pod in pods], k8s.gpus_per_node),
        gateway_replicas=(k8s.gateway_replicas, k8s.max_replicas),
        unshared=_sharing(config),
    )


def render_cluster_plan(cluster: ClusterPlan, source: str) -> str:
    low, high = cluster.gateway_replicas
    notes = [
        f"Kubernetes: {len(cluster.pods)} engine pod(s) asking for {cluster.gpus} GPU(s) in all, "
        f"they fit on {cluster.nodes_needed} node(s) of {cluster.gpus_per_node} GPUs; "
        f"gateway {low}-{high} replicas, each endpoint's max_concurrency divided by {high}."
    ]
    if cluster.unshared:
        notes.append(
            f"{', '.join(cluster.unshared)} share GPUs on one host; in the cluster each pod gets GPUs of its own "
            "(their gpu_memory_utilization then leaves the rest of each GPU unused)."
        )
    return render_plan(cluster.plan, source, notes=notes)


def _sharing(config: Config) -> tuple[str, ...]:
    users: dict[tuple[str | None, int], list[str]] = {}
    for name, endpoint in config.endpoints.items():
        if endpoint.serve is not None and endpoint.serve.nodes == 1:
            for gpu in endpoint.serve.gpus:
                users.setdefault((endpoint.serve.node, gpu), []).append(name)
    return tuple(dict.fromkeys(name for names in users.values() if len(names) > 1 for name in names))


def _nodes_needed(pods: list[int], per_node: int) -> int:
    """Nodes used by first-fit decreasing: a placement that exists (the optimum is at most this)."""
    free: list[int] = []
    for gpus in sorted(pods, reverse=True):
        if gpus > per_node:
            free.append(0)  # never schedules; counted so the total is not too low
            continue
        for i, left in enumerate(free):
            if left >= gpus:
                free[i] -= gpus
                break
        else:
            free.append(per_node - gpus)
    return len(free)
