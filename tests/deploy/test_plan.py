"""The memory planner and model shapes, checked against numbers worked out by hand.

The fixtures under tests/fixtures/models/ are config.json files written from
the models' published architecture numbers; their parameter counts below
agree with the counts the model authors publish.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from moa_local.cli import main
from moa_local.config import load_config, parse_config
from moa_local.deploy.model_shape import ShapeError, read_shape
from moa_local.deploy.plan import GIB, RUNTIME_OVERHEAD_BYTES, make_plan, parse_size

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
CPU_MODELS = Path(os.environ.get("MOA_LOCAL_CACHE", "~/.cache/moa-local")).expanduser() / "models"
GPU_PROFILES = ("gpu-seed", "gpu-small", "paper-moa", "paper-moa-lite")


def profile_text(name: str) -> str:
    return (ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8")


# --- shapes -------------------------------------------------------------------------


def test_llama_3_1_8b_parameters_by_hand() -> None:
    shape = read_shape(MODELS / "Llama-3.1-8B-Instruct")
    # per layer: q 4096*4096 + k,v 2*4096*1024 + o 4096*4096 + MLP 3*4096*14336 + 2 norms of 4096
    per_layer = 16_777_216 + 8_388_608 + 16_777_216 + 176_160_768 + 8_192
    assert per_layer == 218_112_000
    # embeddings and an untied lm_head: 2 * 128256 * 4096; a final norm of 4096
    assert shape.params == 32 * per_layer + 1_050_673_152 + 4_096 == 8_030_261_248
    assert shape.weight_bytes() == 16_060_522_496  # bfloat16
    assert shape.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("Meta-Llama-3-70B-Instruct", 70_553_706_496),
        ("Qwen2-72B-Instruct-FP8", 72_706_203_648),
        ("Mistral-7B-Instruct-v0.3", 7_248_023_552),
        ("WizardLM-2-8x22B", 140_620_634_112),  # Mixtral-8x22B-v0.1's 32000-token vocabulary
        ("Mixtral-8x22B-Instruct-v0.1", 140_630_071_296),  # + 768 tokens: 2 * 768 * 6144 more
        ("dbrx-instruct", 131_596_523_520),
        ("Qwen1.5-72B-Chat", 72_287_920_128),
        ("Qwen1.5-110B-Chat", 111_209_914_368),
    ],
)
def test_parameter_counts_match_the_published_sizes(model: str, params: int) -> None:
    assert read_shape(MODELS / model).params == params


def test_moe_experts_are_read_from_mixtral_and_dbrx_configs() -> None:
    mixtral, dbrx = read_shape(MODELS / "Mixtral-8x22B-Instruct-v0.1"), read_shape(MODELS / "dbrx-instruct")
    assert (mixtral.experts, mixtral.experts_per_token, mixtral.intermediate) == (8, 2, 16384)
    assert (dbrx.experts, dbrx.experts_per_token, dbrx.kv_heads, dbrx.head_dim) == (16, 4, 8, 128)
    # one DBRX layer: fused QKV 6144*(6144+2*1024) + out 6144*6144 + 16 experts * 3*6144*10752 + router 6144*16
    assert dbrx.layer_linear_params == 50_331_648 + 37_748_736 + 3_170_893_824 + 98_304


def test_fp8_checkpoint_weights_by_hand() -> None:
    shape = read_shape(MODELS / "Qwen2-72B-Instruct-FP8")
    # linear weights at 1 byte: per layer 8192*(8192+2*1024) + 8192*8192 + 3*8192*29568 = 877,658,112; 80 layers
    linear = 80 * 877_658_112
    # kept in bfloat16: embeddings + lm_head 2*152064*8192, per layer 2 norms + QKV bias (26,624), final norm
    other = 2_491_416_576 + 80 * 26_624 + 8_192
    assert shape.weight_bytes() == linear + 2 * other == 75_199_758_336


def test_safetensors_index_gives_the_stored_size() -> None:
    shape = read_shape(MODELS / "Qwen2.5-7B-Instruct")
    assert shape.checkpoint_bytes == 15_231_233_024 == 2 * shape.params  # the published index agrees with the count
    assert shape.weight_bytes() == 15_231_233_024
    assert shape.weight_bytes(quantization="fp8") < shape.checkpoint_bytes  # quantized at load: estimated instead


def test_kv_cache_bytes_per_gpu_under_tensor_parallelism() -> None:
    assert read_shape(MODELS / "Qwen1.5-72B-Chat").kv_bytes_per_token(tensor_parallel=4) == 2 * 80 * 16 * 128 * 2
    mixtral = read_shape(MODELS / "Mixtral-8x22B-Instruct-v0.1-FP8")
    assert mixtral.kv_bytes_per_token(tensor_parallel=2, kv_cache_dtype="fp8") == 2 * 56 * 4 * 128 * 1 == 57_344
    # 4 KV heads over 8 GPUs: each GPU keeps one (replicated) head
    assert read_shape(MODELS / "Qwen2.5-7B-Instruct").kv_bytes_per_token(tensor_parallel=8) == 2 * 28 * 1 * 128 * 2


def test_a_folder_without_config_json_is_a_shape_error(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match=r"config\.json: not found"):
        read_shape(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    with pytest.raises(ShapeError, match="missing or bad field"):
        read_shape(tmp_path)


@pytest.mark.parametrize(
    ("folder", "params", "kv_bytes"),
    [
        # SmolLM2-135M: 30 layers, 3 KV heads of 64, tied embeddings
        ("smollm2-135m-instruct", 134_515_008, 2 * 30 * 3 * 64 * 2),
        # Qwen2.5-Coder-0.5B: 24 layers, 2 KV heads of 64, an untied lm_head
        ("qwen2.5-coder-0.5b-instruct", 630_167_424, 2 * 24 * 2 * 64 * 2),
    ],
)
def test_real_cpu_models_match_their_weight_files(folder: str, params: int, kv_bytes: int) -> None:
    path = CPU_MODELS / folder
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} is absent: `make models` converts the CPU models")
    shape = read_shape(path)
    assert shape.params == params
    assert shape.kv_bytes_per_token() == kv_bytes
    stored = (path / "model.safetensors").stat().st_size  # bfloat16 tensors plus a small JSON header
    assert 0 <= stored - 2 * params < 100_000


def test_cpu_profile_plan_fits() -> None:
    if not all(
        (CPU_MODELS / name / "config.json").is_file()
        for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
    ):
        pytest.skip(f"CPU models absent under {CPU_MODELS}: `make models` converts them")
    plan = make_plan(load_config(ROOT / "configs/cpu.yaml"))
    assert plan.fits, plan.problems
    smollm2 = next(s for s in plan.servers if s.endpoint == "smollm2")
    assert (smollm2.kv_budget_bytes, smollm2.kv_tokens) == (GIB, GIB // 23_040)


# --- plans ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", GPU_PROFILES)
@pytest.mark.parametrize("gpu_memory", ["80GiB", "81559MiB"])  # nominal, and what an H100 80GB reports
def test_every_gpu_profile_fits_its_stated_hardware(profile: str, gpu_memory: str) -> None:
    config = load_config(ROOT / f"configs/{profile}.yaml")
    plan = make_plan(config, gpu_memory_bytes=parse_size(gpu_memory), models_dir=MODELS)
    assert plan.fits, plan.problems
    assert len(plan.servers) == sum(1 for e in config.endpoints.values() if e.serve is not None)


def test_gpu_seed_numbers_by_hand() -> None:
    plan = make_plan(load_config(ROOT / "configs/gpu-seed.yaml"), models_dir=MODELS)
    qwen = next(s for s in plan.servers if s.endpoint == "qwen2-72b")
    allowed = int(0.92 * 80 * GIB)  # vLLM's default utilization of an 80 GiB GPU: 79,027,398,246 bytes
    per_gpu = 75_199_758_336 // 2  # the FP8 weights split over 2 GPUs
    assert qwen.weight_bytes_per_device == per_gpu == 37_599_879_168
    assert qwen.kv_budget_bytes == allowed - per_gpu - RUNTIME_OVERHEAD_BYTES == 38_206_293_606
    assert qwen.kv_bytes_per_token == 2 * 80 * 4 * 128 * 2 == 163_840
    assert qwen.kv_tokens == 38_206_293_606 // 163_840 == 233_192
    mixtral = next(s for s in plan.servers if s.endpoint == "mixtral-8x22b")
    # 0.95 * 80 GiB - 70,516,709,376 of weights per GPU - 3 GiB = 7,866,443,776 bytes of FP8 KV cache
    assert (mixtral.kv_budget_bytes, mixtral.kv_tokens) == (7_866_443_776, 7_866_443_776 // 57_344)


def test_gpu_small_shares_one_gpu_within_its_memory() -> None:
    plan = make_plan(load_config(ROOT / "configs/gpu-small.yaml"), models_dir=MODELS)
    assert [name for name, _ in plan.gpu_claims[("local", 0)]] == ["qwen2.5-7b", "llama-3.1-8b", "mistral-7b"]
    assert sum(fraction for _, fraction in plan.gpu_claims[("local", 0)]) == pytest.approx(0.94)
    llama = next(s for s in plan.servers if s.endpoint == "llama-3.1-8b")
    assert llama.kv_tokens == 8 * GIB // 131_072 == 65_536


def test_an_oversized_variant_does_not_fit() -> None:
    # Mixtral-8x22B in bfloat16 (~262 GiB) on the 2 GPUs that hold its FP8 version.
    text = profile_text("gpu-seed").replace(
        "/models/Mixtral-8x22B-Instruct-v0.1-FP8", "/models/Mixtral-8x22B-Instruct-v0.1"
    )
    plan = make_plan(parse_config(text), models_dir=MODELS)
    assert not plan.fits
    (problem,) = plan.problems
    assert problem.startswith("mixtral-8x22b: does not fit: 131.0 GiB of weights per GPU")


def test_over_subscribed_gpu_and_bad_tensor_parallel_size_are_flagged() -> None:
    shared = profile_text("gpu-small").replace("gpu_memory_utilization: 0.33", "gpu_memory_utilization: 0.5")
    problems = make_plan(parse_config(shared), models_dir=MODELS).problems
    assert any(p.startswith("node local GPU 0 is over-subscribed: qwen2.5-7b 0.3, llama-3.1-8b 0.5") for p in problems)
    three = profile_text("gpu-seed").replace("gpus: [0, 1]", "gpus: [0, 1, 8]")
    problems = make_plan(parse_config(three), models_dir=MODELS).problems
    assert "qwen2-72b: tensor parallel size 3 does not divide the 64 attention heads" in problems
    assert "qwen2-72b: tensor parallel size 3 does not split the 8 KV heads evenly" in problems


def test_context_windows_too_small_for_the_mixture_are_flagged() -> None:
    config = load_config(ROOT / "configs/paper-moa.yaml")
    assert make_plan(config, models_dir=MODELS, prompt_tokens=4000).fits
    problems = make_plan(config, models_dir=MODELS, prompt_tokens=5000).problems
    # a last-layer call reads the prompt, 6 references of 512 tokens (+200 for the instruction) and answers 512
    assert (
        "mixtures.paper-moa.aggregator: qwen1.5-110b's context window 8192 is too small: "
        "prompt 5000 + references 3272 + answer 512 = 8784" in problems
    )
    assert sum(p.startswith("mixtures.paper-moa.layers.1.agents.") for p in problems) == 6
    assert not any("layers.0" in p for p in problems)  # the first layer sees only the prompt: 5000 + 512


def test_a_missing_model_folder_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    plan = make_plan(load_config(ROOT / "configs/gpu-seed.yaml"), models_dir=tmp_path)
    assert len(plan.problems) == 4
    assert plan.problems[0].startswith("qwen2-72b: cannot plan: ")


@pytest.mark.parametrize(
    ("text", "size"),
    [("80GiB", 80 * GIB), ("80 GB", 80 * 10**9), ("81559MiB", 81559 * 2**20), ("1024", 1024), ("0.5gib", GIB // 2)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "80 parsecs", "GiB", "-1GiB"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size(text)


def test_cli_plan_reports_fit_and_misfit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    ok = CliRunner().invoke(main, ["plan", "--config", "configs/gpu-seed.yaml", "--models-dir", str(MODELS)])
    assert ok.exit_code == 0, ok.output
    assert "Fits: no problems found." in ok.output
    oversized = tmp_path / "oversized.yaml"
    oversized.write_text(profile_text("gpu-seed").replace("-v0.1-FP8", "-v0.1"), encoding="utf-8")
    bad = CliRunner().invoke(main, ["plan", "--config", str(oversized), "--models-dir", str(MODELS)])
    assert bad.exit_code == 1
    assert "Does not fit: 1 problem(s):" in bad.output
    assert bad.output.rstrip().splitlines()[-1] == f"Error: {oversized}: 1 problem(s); see above"
    wrong = CliRunner().invoke(main, ["plan", "--config", "configs/gpu-seed.yaml", "--gpu-memory", "lots"])
    assert wrong.exit_code == 1
    assert wrong.output.strip().splitlines() == [
        "Error: --gpu-memory: not a memory size: 'lots' (use e.g. 80GiB, 80GB or 81559MiB)"
    ]
