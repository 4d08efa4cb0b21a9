"""lm-evaluation-harness as a user runs it against the gateway: its console script over a local task.

`lm_eval --model local-chat-completions` is the harness's OpenAI-compatible
client; the task is a YAML file over a local JSONL (the `json` dataset
builder, offline: no hub), scored by exact match. `run_harness` writes the
task, runs the harness as its own process and returns the task's results
and the samples it logged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TASK = """\
task: moa_local_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {max_tokens}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def run_harness(folder: Path, base_url: str, model: str, rows: list[dict[str, str]], *, api_key: str = "",
                max_tokens: int = 16, concurrent: int = 1,
                timeout_s: float = 300) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Run the tiny task against `model` at `base_url` (the gateway's /v1); the results and the logged samples."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness comes with the eval extra")
    harness = shutil.which("lm_eval", path=str(Path(sys.executable).parent))
    assert harness is not None, "lm-eval is installed but its console script is not beside python"
    (folder / "tiny.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "tiny.yaml").write_text(TASK.format(data=folder / "tiny.jsonl", max_tokens=max_tokens), encoding="utf-8")
    model_args = (f"base_url={base_url}/chat/completions,model={model},tokenizer_backend=none,max_retries=1,"
                  f"num_concurrent={concurrent},timeout={int(timeout_s)}")  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder / "hf"),
           "OPENAI_API_KEY": api_key}  # fmt: skip
    done = subprocess.run(
        [harness, "--model", "local-chat-completions", "--model_args", model_args, "--tasks", "moa_local_tiny",
         "--include_path", str(folder), "--apply_chat_template", "--output_path", str(folder / "out"),
         "--log_samples"],
        capture_output=True, text=True, timeout=timeout_s * (len(rows) + 1), env=env, cwd=folder, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    [result_file] = (folder / "out").rglob("results_*.json")
    [samples_file] = (folder / "out").rglob("samples_moa_local_tiny_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(result_file.read_text())["results"]["moa_local_tiny"], samples
