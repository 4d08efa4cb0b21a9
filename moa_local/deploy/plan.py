"""Will a config's models fit their GPUs? A memory plan read from the model folders.

For each endpoint with a `serve` block, `make_plan` reads the model's shape
(`model_shape.py`), estimates its weights per GPU, its KV-cache bytes per
token and how many tokens of KV cache fit at the configured memory settings.
It then lists every problem it can see before a start would fail or thrash:
a model that does not fit, a KV cache smaller than one full-length sequence,
GPUs promised to servers for more than their memory (vLLM refuses to start
when free memory is below `--gpu-memory-utilization` of the total), tensor
parallel sizes that do not divide the attention heads, and context windows too
small for what the mixture sends (prompt + references + answer).

A server spanning several nodes (`serve.nodes`) splits its layers into one
pipeline stage per node, each stage tensor-parallel over that node's GPUs:
its weights and KV cache per GPU are divided by both. With `cluster=True`
(Kubernetes, see `cluster_plan.py`) every engine pod gets whole GPUs of its
own, so GPUs shared on one host by index are no longer shared.

The numbers are estimates: vLLM measures activations and CUDA graphs at start;
`RUNTIME_OVERHEAD_BYTES` stands in for them. GPU indices are per node.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moa_local.config import Config, EndpointConfig, MixtureConfig
from moa_local.deploy.model_shape import ModelShape, ShapeError, read_shape

GIB = 1024**3
DEFAULT_GPU_MEMORY = 80 * GIB
DEFAULT_UTILIZATION = 0.92  # vLLM's default --gpu-memory-utilization
RUNTIME_OVERHEAD_BYTES = 3 * GIB  # per GPU: CUDA context, peak activations, CUDA graphs (rough)
CPU_DEFAULT_KV_GIB = 1  # VLLM_CPU_KVCACHE_SPACE when the serve block sets none
REFERENCE_OVERHEAD_TOKENS = 200  # the synthesis instruction and the numbering of references
LOCAL_NODE = "local"
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class ServerPlan:
    endpoint: str
    engine: str
    node: str
    gpus: tuple[int, ...]
    tensor_parallel: int
    model: str  # the model folder's name
    params: int
    weight_bytes: int  # the whole model
    kv_bytes_per_token: int  # on each GPU (or the CPU)
    kv_budget_bytes: int  # KV cache on each GPU (or the CPU)
    max_model_len: int | None
    utilization: float | None  # --gpu-memory-utilization in force (GPU engines)
    pipeline_parallel: int = 1  # nodes the server spans, one pipeline stage each
    devices: str = ""  # how the table shows its GPUs

    @property
    def weight_bytes_per_device(self) -> int:
        return math.ceil(self.weight_bytes / (self.tensor_parallel * self.pipeline_parallel))

    @property
    def kv_tokens(self) -> int:
        return max(0, self.kv_budget_bytes) // self.kv_bytes_per_token

    @property
    def full_sequences(self) -> float | None:
        """Sequences of max_model_len tokens the KV cache holds at once."""
        return self.kv_tokens / self.max_model_len if self.max_model_len else None


@dataclass(frozen=True)
class Plan:
    gpu_memory_bytes: int
    servers: tuple[ServerPlan, ...]
    gpu_claims: dict[tuple[str, int], tuple[tuple[str, float], ...]]  # (node, gpu) -> (endpoint, fraction)
    problems: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.problems


def parse_size(text: str) -> int:
    """'80GiB', '80 GB', '81559MiB' or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _UNITS):
        raise ValueError(f"not a memory size: {text!r} (use e.g. 80GiB, 80GB or 81559MiB)")
    return round(float(match.group(1)) * _UNITS[unit or "b"])


def make_plan(
    config: Config,
    *,
    gpu_memory_bytes: int = DEFAULT_GPU_MEMORY,
    models_dir: str | Path | None = None,
    prompt_tokens: int = 1024,
    cluster: bool = False,
) -> Plan:
    """Plan every served endpoint; `models_dir` replaces the folder holding each model_path.

    `cluster`: plan for Kubernetes, where each engine pod has its GPUs to itself.
    """
    servers: list[ServerPlan] = []
    problems: list[str] = []
    shapes: dict[str, ModelShape] = {}
    claims: dict[tuple[str, int], list[tuple[str, float]]] = defaultdict(list)
    for name, endpoint in config.endpoints.items():
        serve = endpoint.serve
        if serve is None:
            continue
        folder = Path(models_dir) / Path(serve.model_path).name if models_dir else Path(serve.model_path)
        try:
            shape = read_shape(folder)
        except ShapeError as exc:
            problems.append(f"{name}: cannot plan: {exc}")
            continue
        shapes[name] = shape
        server = _server_plan(name, endpoint, shape, folder.name, gpu_memory_bytes, cluster)
        servers.append(server)
        problems += [f"{name}: {problem}" for problem in _server_problems(server, shape, gpu_memory_bytes)]
        if cluster or server.pipeline_parallel > 1:
            continue  # its GPUs are its own: nothing else is placed on its pods or its nodes
        for gpu in server.gpus:
            claims[(server.node, gpu)].append((name, server.utilization or DEFAULT_UTILIZATION))
    for (node, gpu), users in sorted(claims.items()):
        total = sum(fraction for _, fraction in users)
        if total > 1.0 + 1e-9:
            who = ", ".join(f"{name} {fraction:g}" for name, fraction in users)
            problems.append(
                f"node {node} GPU {gpu} is over-subscribed: {who} claim {total:.2f} of its memory; "
                "set gpu_memory_utilization on each so they add up to at most 1"
            )
    windows = {name: _context_window(endpoint, shapes.get(name)) for name, endpoint in config.endpoints.items()}
    for mixture_name, mixture in config.mixtures.items():
        problems += _context_problems(mixture_name, mixture, windows, prompt_tokens)
    frozen_claims = {key: tuple(users) for key, users in sorted(claims.items())}
    return Plan(gpu_memory_bytes, tuple(servers), frozen_claims, tuple(problems))


def _server_plan(
    name: str, endpoint: EndpointConfig, shape: ModelShape, model: str, gpu_memory: int, cluster: bool
) -> ServerPlan:
    serve = endpoint.serve
    assert serve is not None
    tp, pp = serve.tensor_parallel, serve.pipeline_parallel
    weights = shape.weight_bytes(dtype=serve.dtype, quantization=serve.quantization)
    kv_all_layers = shape.kv_bytes_per_token(tensor_parallel=tp, kv_cache_dtype=serve.kv_cache_dtype)
    kv_per_token = math.ceil(kv_all_layers * math.ceil(shape.layers / pp) / shape.layers)  # the largest stage
    utilization: float | None = None
    if serve.engine == "vllm":
        utilization = serve.gpu_memory_utilization or DEFAULT_UTILIZATION
        free_for_kv = int(utilization * gpu_memory) - math.ceil(weights / (tp * pp)) - RUNTIME_OVERHEAD_BYTES
        budget = serve.kv_cache_memory_bytes if serve.kv_cache_memory_bytes is not None else free_for_kv
    else:
        budget = (serve.kv_cache_gib or CPU_DEFAULT_KV_GIB) * GIB
    if cluster:
        node, devices = ("k8s pod" if pp == 1 else f"k8s, {pp} pods"), f"{tp} GPU" + ("s" if tp > 1 else "")
    else:
        node = serve.node or (LOCAL_NODE if pp == 1 else f"{pp} nodes")
        devices = ",".join(str(g) for g in serve.gpus) if serve.gpus else "cpu"
    return ServerPlan(
        endpoint=name,
        engine=serve.engine,
        node=node,
        gpus=serve.gpus,
        tensor_parallel=tp,
        model=model,
        params=shape.params,
        weight_bytes=weights,
        kv_bytes_per_token=kv_per_token,
        kv_budget_bytes=budget,
        max_model_len=serve.max_model_len or endpoint.context_window or shape.max_position,
        utilization=utilization,
        pipeline_parallel=pp,
        devices=devices,
    )


def _server_problems(server: ServerPlan, shape: ModelShape, gpu_memory: int) -> list[str]:
    problems: list[str] = []
    tp = server.tensor_parallel
    if shape.heads % tp:
        problems.append(f"tensor parallel size {tp} does not divide the {shape.heads} attention heads")
    if (shape.kv_heads >= tp and shape.kv_heads % tp) or (shape.kv_heads < tp and tp % shape.kv_heads):
        problems.append(f"tensor parallel size {tp} does not split the {shape.kv_heads} KV heads evenly")
    if server.max_model_len and shape.max_position and server.max_model_len > shape.max_position:
        problems.append(f"max_model_len {server.max_model_len} is above the model's {shape.max_position} positions")
    if server.engine == "vllm" and server.utilization is not None:
        allowed = int(server.utilization * gpu_memory)
        needed = server.weight_bytes_per_device + RUNTIME_OVERHEAD_BYTES + max(0, server.kv_budget_bytes)
        if server.kv_budget_bytes <= 0 or needed > allowed:
            return [
                *problems,
                f"does not fit: {_gib(server.weight_bytes_per_device)} of weights per GPU + "
                f"{_gib(RUNTIME_OVERHEAD_BYTES)} runtime + {_gib(max(0, server.kv_budget_bytes))} KV cache "
                f"> {_gib(allowed)} ({server.utilization:g} of {_gib(gpu_memory)})",
            ]
    if server.max_model_len and server.kv_tokens < server.max_model_len:
        problems.append(
            f"KV cache holds {server.kv_tokens} tokens, less than one sequence of max_model_len {server.max_model_len}"
        )
    return problems


def _context_window(endpoint: EndpointConfig, shape: ModelShape | None) -> int | None:
    serve_len = endpoint.serve.max_model_len if endpoint.serve else None
    return endpoint.context_window or serve_len or (shape.max_position if shape else None)


def _context_problems(
    name: str, mixture: MixtureConfig, windows: dict[str, int | None], prompt_tokens: int
) -> list[str]:
    """Each call must hold the prompt, the previous layer's answers (if any) and its own answer."""
    problems: list[str] = []
    calls = [
        (f"layers.{i}.agents.{j}", agent, i)
        for i, layer in enumerate(mixture.layers)
        for j, agent in enumerate(layer.agents)
    ]
    for where, agent, index in [*calls, ("aggregator", mixture.aggregator, len(mixture.layers))]:
        previous = mixture.layers[index - 1] if index > 0 else None
        references = sum(a.max_tokens * a.n for a in previous.agents) if previous else 0
        overhead = REFERENCE_OVERHEAD_TOKENS if previous else 0
        needed = prompt_tokens + overhead + references + agent.max_tokens
        window = windows.get(agent.endpoint)
        if window is not None and needed > window:
            problems.append(
                f"mixtures.{name}.{where}: {agent.endpoint}'s context window {window} is too small: "
                f"prompt {prompt_tokens} + references {references + overhead} + answer {agent.max_tokens} = {needed}"
            )
    return problems


def render_plan(plan: Plan, source: str, notes: Sequence[str] = ()) -> str:
    per_gpu = f" ({_gib(plan.gpu_memory_bytes)} per GPU)" if any(s.gpus for s in plan.servers) else ""
    lines = [f"Memory plan for {source}{per_gpu}", ""]
    rows = [_COLUMNS, *(_row(server) for server in plan.servers)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    shared = {key: users for key, users in plan.gpu_claims.items() if len(users) > 1}
    if shared:
        lines += ["", "Shared GPUs (gpu_memory_utilization adds up to at most 1):"]
        for (node, gpu), users in shared.items():
            total = sum(fraction for _, fraction in users)
            names = ", ".join(f"{name} {fraction:g}" for name, fraction in users)
            lines.append(f"  {node} GPU {gpu}: {total:.2f} ({names})")
    if notes:
        lines += ["", *notes]
    lines.append("")
    if plan.fits:
        lines.append("Fits: no problems found.")
    else:
        lines.append(f"Does not fit: {len(plan.problems)} problem(s):")
        lines += [f"  - {problem}" for problem in plan.problems]
    return "\n".join(lines) + "\n"


_COLUMNS: tuple[str, ...] = ("endpoint", "node", "devices", "TPxPP", "model", "params", "weights/dev")
_COLUMNS += ("KV/token/dev", "KV/dev", "KV-tokens", "max-len", "seqs")


def _row(s: ServerPlan) -> tuple[str, ...]:
    seqs = f"{s.full_sequences:.1f}" if s.full_sequences is not None else "-"
    parallel = str(s.tensor_parallel) + (f"x{s.pipeline_parallel}" if s.pipeline_parallel > 1 else "")
    model = (s.endpoint, s.node, s.devices, parallel, s.model, f"{s.params / 1e9:.2f}B")
    kv = (f"{s.kv_bytes_per_token / 1024:.0f} KiB", _gib(max(0, s.kv_budget_bytes)), f"{s.kv_tokens:,}")
    return (*model, _gib(s.weight_bytes_per_device), *kv, str(s.max_model_len or "-"), seqs)


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"
