"""A user's own harness pointed at the gateway: lm-evaluation-harness runs a task against a mixture.

`lm_eval --model local-chat-completions` is the harness's OpenAI-compatible
client; the task is a YAML file over a local JSONL (the `json` dataset
builder, offline: no hub). The mixture runs over fake engines whose
aggregator gives a fixed reply, so exact match is known: 2 of 3. The
harness runs as its own process (its console script), as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.gateway_fixtures import fake_config, mixture

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory
    from tests.support.gateway_fixtures import GatewayFactory

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
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_fault_lm_eval_harness_runs_a_local_task_against_a_mixture_through_the_gateway(
    tmp_path: Path, fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness comes with the eval extra")
    harness = shutil.which("lm_eval", path=str(Path(sys.executable).parent))
    assert harness is not None, "lm-eval is installed but its console script is not beside python"
    a, agg = fake_engine(model="a"), fake_engine(model="agg", reply="Paris")
    gateway = gateway_server(fake_config({"a": a, "agg": agg}, {"moa": mixture(["a"], "agg")}))
    rows = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "Same again?", "answer": "Paris"},
            {"question": "Capital of Italy?", "answer": "Rome"}]  # fmt: skip
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (tmp_path / "tiny.yaml").write_text(TASK.format(data=tmp_path / "tiny.jsonl"), encoding="utf-8")
    model_args = f"base_url={gateway.base_url}/chat/completions,model=moa,tokenizer_backend=none,max_retries=1"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [harness, "--model", "local-chat-completions", "--model_args", model_args, "--tasks", "moa_local_tiny",
         "--include_path", str(tmp_path), "--apply_chat_template", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    [result_file] = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"]["moa_local_tiny"]
    assert results["exact_match,none"] == pytest.approx(2 / 3)
    assert len(agg.chat_bodies()) == 3 and len(a.chat_bodies()) == 3  # every question went through the mixture
