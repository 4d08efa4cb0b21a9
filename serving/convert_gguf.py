"""Convert a GGUF file to a bfloat16 Hugging Face folder that vLLM's CPU build can load.

Runs inside the engine environment (torch, transformers, gguf). vLLM on CPU
cannot read GGUF, and transformers keeps GGUF weights packed unless asked to
dequantize, so this: loads the GGUF dequantized, rebuilds a plain model from
its config (no quantization config), ties the embeddings where the GGUF has no
separate output head, saves safetensors, the tokenizer (chat template, EOS) and
the generation config, restores BOS-prepending where the GGUF sets
`tokenizer.ggml.add_bos_token` (the conversion drops it), reloads the saved
folder and runs one greedy sanity generation. Writes a JSON report.

It deliberately does not check the checksum or pick the output location:
`fetch_models.py` does that and renames the folder into place.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def gguf_flag(path: Path, key: str) -> bool | None:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get(key)
    if field is None:
        return None
    return bool(field.parts[field.data[0]][0])


def restore_bos(tokenizer: Any) -> None:
    from tokenizers.processors import TemplateProcessing

    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )
    tokenizer.add_bos_token = True


def convert(gguf_path: Path, out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    packed = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        dtype=torch.bfloat16,
    )
    config = packed.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(packed.state_dict(), strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    allowed_missing = {"lm_head.weight"} if tied else set()
    if set(missing) - allowed_missing or unexpected:
        raise RuntimeError(f"weights do not fit the rebuilt model: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = packed.generation_config
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    if model.generation_config.pad_token_id is None:
        pad = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.eos_token_id if pad is None else pad
    model.save_pretrained(str(out), safe_serialization=True)

    add_bos = gguf_flag(gguf_path, "tokenizer.ggml.add_bos_token")
    if add_bos and tokenizer.bos_token is not None:
        restore_bos(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError("the GGUF carries no chat template")
    tokenizer.save_pretrained(str(out))
    return {"add_bos_token": bool(add_bos), "tied": tied}


def sanity(out: Path, prompt: str, add_bos: bool) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    if add_bos and tokenizer("x")["input_ids"][0] != tokenizer.bos_token_id:
        raise RuntimeError("the saved tokenizer does not prepend BOS although the GGUF asks for it")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    answer: str = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--prompt", default="What is the capital of France?")
    args = parser.parse_args()

    import tokenizers
    import torch
    import transformers

    result = convert(args.gguf, args.out)
    result["sanity_output"] = sanity(args.out, args.prompt, result["add_bos_token"])
    result["versions"] = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
    }
    args.report.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
