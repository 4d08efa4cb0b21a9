"""A model's shape from its Hugging Face folder, and the memory it implies.

`read_shape(folder)` parses `config.json` (Llama, Qwen2, Mistral, Mixtral,
Gemma 2 and other decoder-only layouts, plus DBRX's nested one) and, when
present, the safetensors index's `metadata.total_size`. From the shape come
a parameter count, the weight bytes at a given precision and the KV-cache
bytes per token on one GPU of a tensor-parallel group.

These are estimates for planning, not what vLLM will measure: the parameter
count covers embeddings, attention, MLP or experts and norms, and leaves out
small extras (rotary caches, biases other than Qwen's QKV bias).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DTYPE_BYTES: dict[str, float] = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
_KV_DTYPE_BYTES: dict[str, float] = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "bfloat16": 2, "float16": 2}
_WEIGHT_QUANT_BYTES: dict[str, float] = {"fp8": 1, "fbgemm_fp8": 1, "modelopt": 1, "int8": 1}


class ShapeError(ValueError):
    """config.json is missing, unreadable or lacks a field the planner needs."""


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int  # per expert for MoE models
    experts: int  # 1 for dense models
    experts_per_token: int
    tied_embeddings: bool
    qkv_bias: bool
    max_position: int | None
    torch_dtype: str
    quant_method: str | None  # the checkpoint's own quantization, if any
    quant_bits: int | None
    checkpoint_bytes: int | None  # safetensors index total_size, when present

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def layer_linear_params(self) -> int:
        """Weights of one layer's linear projections (attention, MLP or all experts, router)."""
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        attention = self.hidden * (q_out + 2 * kv_out) + q_out * self.hidden
        mlp = self.experts * 3 * self.hidden * self.intermediate
        router = self.hidden * self.experts if self.experts > 1 else 0
        return attention + mlp + router

    @property
    def layer_other_params(self) -> int:
        """Norms and QKV biases of one layer (kept at full precision by quantized checkpoints)."""
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return 2 * self.hidden + bias

    @property
    def params(self) -> int:
        per_layer = self.layer_linear_params + self.layer_other_params
        return self.embedding_params + self.layers * per_layer + self.hidden

    def weight_bytes(self, *, dtype: str | None = None, quantization: str | None = None) -> int:
        """Bytes of weights once loaded; `quantization` is the engine's --quantization."""
        half = _dtype_bytes(dtype, self.torch_dtype)
        # A checkpoint loads as stored unless the engine casts or quantizes it.
        cast = half != DTYPE_BYTES.get(self.torch_dtype)
        as_stored = self.quant_method is not None or (quantization is None and not cast)
        if self.checkpoint_bytes is not None and as_stored:
            return self.checkpoint_bytes
        method = self.quant_method or quantization
        linear = self.layers * self.layer_linear_params
        other = self.embedding_params + self.layers * self.layer_other_params + self.hidden
        return round(linear * _linear_bytes(method, self.quant_bits, half) + other * half)

    def kv_bytes_per_token(self, *, tensor_parallel: int = 1, kv_cache_dtype: str | None = None) -> int:
        """KV-cache bytes one token takes on each GPU of a tensor-parallel group.

        vLLM splits KV heads across the group; with fewer KV heads than GPUs
        each GPU keeps one (replicated) head.
        """
        heads_per_gpu = max(1, self.kv_heads // tensor_parallel)
        size = _KV_DTYPE_BYTES.get(kv_cache_dtype or "auto", _dtype_bytes(None, self.torch_dtype))
        return round(2 * self.layers * heads_per_gpu * self.head_dim * size)


def read_shape(folder: str | Path) -> ModelShape:
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShapeError(f"{path}: not found") from None
    except (OSError, ValueError) as exc:
        raise ShapeError(f"{path}: cannot read ({exc})") from None
    if not isinstance(raw, dict):
        raise ShapeError(f"{path}: not a JSON object")
    try:
        shape = _dbrx_shape(raw) if raw.get("model_type") == "dbrx" else _decoder_shape(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShapeError(f"{path}: missing or bad field {exc}") from None
    total = _index_total_size(Path(folder) / "model.safetensors.index.json")
    return shape if total is None else replace(shape, checkpoint_bytes=total)


def _decoder_shape(raw: dict[str, Any]) -> ModelShape:
    hidden = int(raw["hidden_size"])
    heads = int(raw["num_attention_heads"])
    model_type = str(raw.get("model_type", ""))
    experts = int(raw.get("num_local_experts") or raw.get("num_experts") or 1)
    intermediate = raw.get("moe_intermediate_size") if experts > 1 else None
    quant = raw.get("quantization_config") or {}
    return ModelShape(
        model_type=model_type,
        layers=int(raw["num_hidden_layers"]),
        hidden=hidden,
        heads=heads,
        kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        vocab=int(raw["vocab_size"]),
        intermediate=int(intermediate or raw["intermediate_size"]),
        experts=experts,
        experts_per_token=int(raw.get("num_experts_per_tok") or 1) if experts > 1 else 1,
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bool(raw.get("attention_bias", model_type == "qwen2")),
        max_position=_optional_int(raw.get("max_position_embeddings")),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
        quant_method=quant.get("quant_method"),
        quant_bits=_quant_bits(quant),
        checkpoint_bytes=None,
    )


def _dbrx_shape(raw: dict[str, Any]) -> ModelShape:
    attn, ffn = raw["attn_config"], raw["ffn_config"]
    hidden, heads = int(raw["d_model"]), int(raw["n_heads"])
    quant = raw.get("quantization_config") or {}
    return ModelShape(
        model_type="dbrx",
        layers=int(raw["n_layers"]),
        hidden=hidden,
        heads=heads,
        kv_heads=int(attn["kv_n_heads"]),
        head_dim=hidden // heads,
        vocab=int(raw["vocab_size"]),
        intermediate=int(ffn["ffn_hidden_size"]),
        experts=int(ffn["moe_num_experts"]),
        experts_per_token=int(ffn["moe_top_k"]),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=False,
        max_position=_optional_int(raw.get("max_seq_len")),
        torch_dtype=str(raw.get("torch_dtype") or "bfloat16"),
        quant_method=quant.get("quant_method"),
        quant_bits=_quant_bits(quant),
        checkpoint_bytes=None,
    )


def _quant_bits(quant: dict[str, Any]) -> int | None:
    """`bits` (AWQ, GPTQ) or the weights' `num_bits` of compressed-tensors checkpoints."""
    if quant.get("bits") is not None:
        return _optional_int(quant["bits"])
    for group in (quant.get("config_groups") or {}).values():
        bits = _optional_int((group.get("weights") or {}).get("num_bits"))
        if bits:
            return bits
    return None


def _index_total_size(path: Path) -> int | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ShapeError(f"{path}: cannot read ({exc})") from None
    total = raw.get("metadata", {}).get("total_size") if isinstance(raw, dict) else None
    return int(total) if total else None


def _dtype_bytes(dtype: str | None, torch_dtype: str) -> float:
    """vLLM's dtype 'auto' keeps bf16/fp16 and runs fp32 checkpoints in 16 bits."""
    if dtype and dtype != "auto":
        return DTYPE_BYTES.get(dtype, 2)
    return 2 if DTYPE_BYTES.get(torch_dtype, 2) == 4 else DTYPE_BYTES.get(torch_dtype, 2)


def _linear_bytes(method: str | None, bits: int | None, half: float) -> float:
    if method is None:
        return half
    if method in _WEIGHT_QUANT_BYTES:
        return _WEIGHT_QUANT_BYTES[method]
    return (bits or 4) / 8  # awq, gptq, marlin...: packed integers (scales not counted)


def _optional_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
