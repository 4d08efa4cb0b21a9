"""The vLLM command line and environment for an endpoint's `serve` block.

One source for every way of starting an engine: bare-metal processes
(`launcher.py`), containers (`compose.py`) and pods (`k8s/`), so they cannot
drift.
It builds arguments only; it starts nothing.
"""

from __future__ import annotations

from moa_local.config import EndpointConfig, ServeConfig

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
CPU_DEFAULT_DTYPE = "bfloat16"
CPU_DEFAULT_KV_CACHE_GIB = 1


def serve_block(name: str, endpoint: EndpointConfig) -> ServeConfig:
    if endpoint.serve is None:
        raise ValueError(f"endpoint {name!r} has no serve block")
    return endpoint.serve


def serve_flags(name: str, endpoint: EndpointConfig, *, host: str, port: int) -> list[str]:
    """Flags after `vllm serve MODEL` (identical for the API-server module)."""
    serve = serve_block(name, endpoint)
    flags = ["--served-model-name", endpoint.model, "--host", host, "--port", str(port)]
    max_model_len = serve.max_model_len or endpoint.context_window
    if max_model_len:
        flags += ["--max-model-len", str(max_model_len)]
    dtype = serve.dtype or (CPU_DEFAULT_DTYPE if serve.engine == "vllm-cpu" else None)
    if dtype:
        flags += ["--dtype", dtype]
    if serve.engine == "vllm-cpu":
        # The CPU build's compile cache does not reload: eager starts ~3x faster.
        flags.append("--enforce-eager")
    else:
        flags += ["--tensor-parallel-size", str(serve.tensor_parallel)]
        if serve.nodes > 1:
            # One server over several machines: vLLM's Ray executor, one pipeline stage per node.
            flags += ["--pipeline-parallel-size", str(serve.pipeline_parallel), "--distributed-executor-backend", "ray"]
        if serve.gpu_memory_utilization is not None:
            flags += ["--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
        if serve.kv_cache_memory_bytes is not None:
            flags += ["--kv-cache-memory-bytes", str(serve.kv_cache_memory_bytes)]
    if serve.max_num_seqs is not None:
        flags += ["--max-num-seqs", str(serve.max_num_seqs)]
    if serve.quantization:
        flags += ["--quantization", serve.quantization]
    if serve.kv_cache_dtype:
        flags += ["--kv-cache-dtype", serve.kv_cache_dtype]
    return [*flags, *serve.args]


def cpu_command(python: str, name: str, endpoint: EndpointConfig, *, host: str = "127.0.0.1") -> list[str]:
    """The CPU build's `vllm` console script is broken; its API-server module works."""
    serve = serve_block(name, endpoint)
    flags = serve_flags(name, endpoint, host=host, port=endpoint.port)
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", serve.model_path, *flags]


def gpu_command(name: str, endpoint: EndpointConfig, *, host: str = "127.0.0.1", vllm: str = "vllm") -> list[str]:
    serve = serve_block(name, endpoint)
    return [vllm, "serve", serve.model_path, *serve_flags(name, endpoint, host=host, port=endpoint.port)]


def engine_env(serve: ServeConfig) -> dict[str, str]:
    """Environment variables the engine needs besides its private folders."""
    env = dict(OFFLINE_ENV)
    if serve.engine == "vllm-cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(serve.kv_cache_gib or CPU_DEFAULT_KV_CACHE_GIB)
        if serve.cpus:
            env["VLLM_CPU_OMP_THREADS_BIND"] = serve.cpus
    else:
        # CUDA numbers GPUs fastest-first by default; PCI bus order matches nvidia-smi and Docker's device_ids.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in serve.gpus)
    return env

