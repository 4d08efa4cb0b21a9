"""`moa-local eval` end to end against fake engines whose fixed replies have scores worked out by hand.

The suites' data are small stand-ins written into the test's cache
(`cached_data.py`), so nothing is downloaded. A fake engine answers every
request with one fixed reply: for IFEval the instructions each reply
follows are known (`FOLLOWED`), for MT-Bench a fake judge always rates 7,
for AlpacaEval a fake judge always says "m". The interruption test runs
the console command as its own process and stops it while a fake hangs.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.cli.test_batch_cli import line_count, records, start, wait_until
from tests.cli.test_cli import invoke, one_error_line, write_config
from tests.evaluation.cached_data import FOLLOWED, REPLY_A, REPLY_B, REPLY_MOA, write_cache

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory, FakeServer

STEADY = {"timeout_s": 60, "max_retries": 0, "circuit": {"failures": 1000}}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOA_LOCAL_CACHE", str(tmp_path / "cache"))
    write_cache(tmp_path / "cache")
    return tmp_path / "cache"


def three_models(tmp_path: Path, fake_engine: FakeEngineFactory, **judge: Any) -> tuple[Path, dict[str, FakeServer]]:
    """Endpoints a and b, mixture "moa" (a and b propose, agg aggregates), and a judge endpoint j if asked."""
    servers = {"a": fake_engine(model="a", reply=REPLY_A), "b": fake_engine(model="b", reply=REPLY_B),
               "agg": fake_engine(model="agg", reply=REPLY_MOA)}  # fmt: skip
    if judge:
        servers["j"] = fake_engine(model="j", **judge)
    return write_config(tmp_path, dict(servers), [["a", "b"]], aggregator="agg", endpoint_settings=STEADY), servers


def results_of(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "results.json").read_text()))


def test_fault_fake_ifeval_run_scores_the_canned_replies_as_worked_out_by_hand(
    tmp_path: Path, fake_engine: FakeEngineFactory, cache: Path
) -> None:
    pytest.importorskip("lm_eval", reason="the ifeval suite needs the eval extra")
    config, servers = three_models(tmp_path, fake_engine)
    out = tmp_path / "run"
    result = invoke("eval", "--config", config, "--models", "a,b,moa", "--suite", "ifeval", "--out", out,
                    "--resamples", "500")  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    results = results_of(out)
    assert results["items"] == 7
    for model, followed in FOLLOWED.items():
        prompts = [f if isinstance(f, bool) else all(f) for f in followed]
        instructions = [x for f in followed for x in (f if isinstance(f, tuple) else (f,))]
        metrics = results["aggregate"][model]["metrics"]
        assert metrics["prompt_strict"]["value"] == pytest.approx(100 * sum(prompts) / 7), model
        assert metrics["inst_strict"]["value"] == pytest.approx(100 * sum(instructions) / 8), model
        assert metrics["prompt_loose"]["value"] == metrics["prompt_strict"]["value"]  # one-line replies
        low, value, high = (metrics["prompt_strict"][k] for k in ("low", "value", "high"))
        assert low <= value <= high
    cost = results["aggregate"]["moa"]["cost"]
    assert (cost["calls_per_item"], cost["tokens_per_item"]) == (3, 2 + 3 + 6)  # a, b, agg; words are tokens
    assert results["aggregate"]["a"]["cost"]["calls_per_item"] == 1
    versus_a = next(c for c in results["comparisons"] if (c["single"], c["metric"]) == ("a", "prompt_strict"))
    assert versus_a["mcnemar"] == {"b": 4, "c": 0, "p": 0.125}  # 4 discordant pairs: 2 * 1/16
    assert versus_a["verdict"] == "no detectable difference at this sample size"
    assert "moa shows no detectable difference from a at this sample size on prompt-level strict" in result.stdout
    for name in ("summary.md", "items.jsonl", "eval.json", "answers/moa.turn1.jsonl", "answers/a.turn1.requests.jsonl"):
        assert (out / name).is_file(), name
    traced = records(out / "answers" / "moa.turn1.jsonl")[0]["response"]["body"]
    assert traced["moa"]["aggregator"]["endpoint"] == "agg" and traced["usage"]["completion_tokens"] == 11
    calls = len(servers["agg"].chat_bodies())

    again = invoke("eval", "--out", out, "--score-only")  # rescoring generates nothing
    assert again.returncode == 0, again.stderr
    assert len(servers["agg"].chat_bodies()) == calls
    assert results_of(out)["aggregate"] == results["aggregate"]


def test_fault_fake_mt_bench_run_with_a_judge_rating_seven(tmp_path: Path, fake_engine: FakeEngineFactory,
                                                           cache: Path) -> None:  # fmt: skip
    config, servers = three_models(tmp_path, fake_engine, reply="Fine answer. Rating: [[7]]")
    out = tmp_path / "run"
    result = invoke("eval", "--config", config, "--models", "a,moa", "--suite", "mt-bench", "--judge", "j",
                    "--out", out, "--resamples", "200")  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    results = results_of(out)
    for model in ("a", "moa"):
        assert results["aggregate"][model]["metrics"]["score"] == {"value": 7.0, "low": 7.0, "high": 7.0, "n": 3}
        assert results["aggregate"][model]["unrated"] == 0
    assert results["judge"]["model"] == "j" and results["warnings"] == []
    judged = servers["j"].chat_bodies()
    assert len(judged) == 3 * 2 * 2 and all(body["temperature"] == 0 for body in judged)
    math_turn_two = next(b for b in judged if b["messages"][0]["content"] == "You judge math turn two.")
    assert "REF-TWO 20" in math_turn_two["messages"][1]["content"]
    histories = [b["messages"][1] for b in servers["a"].chat_bodies() if len(b["messages"]) == 3]
    assert histories.count({"role": "assistant", "content": REPLY_A}) == 3  # a's own first answers
    assert histories.count({"role": "assistant", "content": REPLY_MOA}) == 3  # a proposing in moa's second turns


def test_fault_score_only_with_models_reports_on_those_only_and_the_folder_keeps_them_all(
    tmp_path: Path, fake_engine: FakeEngineFactory, cache: Path
) -> None:
    config, servers = three_models(tmp_path, fake_engine, reply="Rating: [[6]]")
    out = tmp_path / "run"
    ran = invoke("eval", "--config", config, "--models", "a,b,moa", "--suite", "mt-bench", "--judge", "j",
                 "--out", out, "--resamples", "200")  # fmt: skip
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    full, calls = results_of(out), sum(len(server.chat_bodies()) for server in servers.values())

    part = invoke("eval", "--out", out, "--score-only", "--models", "moa, a")
    assert part.returncode == 0, (part.stdout, part.stderr)
    results = results_of(out)
    assert [m["name"] for m in results["models"]] == ["a", "moa"]  # the run's order
    assert results["aggregate"] == {name: full["aggregate"][name] for name in ("a", "moa")}
    assert {(c["mixture"], c["single"]) for c in results["comparisons"]} == {("moa", "a")}
    assert "b:" not in part.stdout and "a: MT-Bench" in part.stdout
    assert one_error_line(invoke("eval", "--out", out, "--score-only", "--models", "a,zz")) == (
        "'zz' is not a model of this run (models: a, b, moa)"
    )
    assert one_error_line(invoke("eval", "--out", out, "--score-only", "--models", ",")) == (
        "--models ',' names no model: give mixtures or endpoints, comma-separated"
    )
    assert sum(len(server.chat_bodies()) for server in servers.values()) == calls  # nothing asked again

    assert invoke("eval", "--out", out, "--score-only").returncode == 0
    assert results_of(out)["aggregate"] == full["aggregate"]  # eval.json still holds all three


def test_fault_fake_alpaca_eval_wins_exactly_where_the_model_was_shown_first(
    tmp_path: Path, fake_engine: FakeEngineFactory, cache: Path
) -> None:
    config, servers = three_models(tmp_path, fake_engine, reply="m")
    out = tmp_path / "run"
    result = invoke("eval", "--config", config, "--models", "a,moa", "--suite", "alpaca-eval", "--judge", "j",
                    "--out", out, "--resamples", "200", "--seed", "3")  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    results = results_of(out)
    firsts = [item["models"]["a"]["detail"]["model_first"] for item in results["per_item"]]
    assert 0 < sum(firsts) < len(firsts)  # the order is drawn per item
    assert results["aggregate"]["a"]["metrics"]["win_rate"]["value"] == pytest.approx(100 * sum(firsts) / 12)
    assert results["aggregate"]["a"]["lc_win_rate"]["n"] == 12
    assert all(body["max_tokens"] == 1 and body["logprobs"] is True for body in servers["j"].chat_bodies())


def test_fault_judge_that_never_rates_is_one_error_line(tmp_path: Path, fake_engine: FakeEngineFactory,
                                                        cache: Path) -> None:  # fmt: skip
    config, _ = three_models(tmp_path, fake_engine, reply="I liked it.")
    out = tmp_path / "run"
    result = invoke("eval", "--config", config, "--models", "a", "--suite", "mt-bench", "--judge", "j", "--out", out)
    assert one_error_line(result) == (
        "judge j never emitted a rating ([[rating]]) in 6 judgments; first reply: 'I liked it.'"
    )
    assert results_of(out)["aggregate"]["a"]["unrated"] == 6  # the report is there to look at


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--models", "a", "--suite", "nope"), "unknown suite 'nope' (known: ifeval, math, mt-bench, alpaca-eval)"),
        (("--models", "a,zzz", "--suite", "ifeval"), "model 'zzz' is not in the config (known: moa, a, agg, b)"),
        (("--models", " , ", "--suite", "ifeval"),
         "--models ' , ' names no model: give mixtures or endpoints, comma-separated"),
        (("--models", "a", "--suite", "mt-bench"), "the mt-bench suite needs a judge: --judge ENDPOINT|URL"),
        (("--models", "a", "--suite", "mt-bench", "--judge", "moa"),
         "judge 'moa' is a mixture; a judge must be an endpoint of the config or a URL"),
        (("--models", "a,moa", "--suite", "ifeval", "--baseline", "a"),
         "--baseline 'a' is not a mixture of the config (mixtures: moa)"),
        (("--models", "a", "--suite", "ifeval", "--baseline", "moa"),
         "the baseline 'moa' is not a model of this run (models: a): add it to --models"),
    ],
)  # fmt: skip
def test_fault_bad_input_is_one_error_line(
    tmp_path: Path, fake_engine: FakeEngineFactory, cache: Path, args: tuple[str, ...], message: str
) -> None:
    config, _ = three_models(tmp_path, fake_engine)
    assert one_error_line(invoke("eval", "--config", config, *args, "--out", tmp_path / "run")) == message


def test_fault_unreachable_judge_is_one_error_line_before_anything_runs(
    tmp_path: Path, fake_engine: FakeEngineFactory, cache: Path
) -> None:
    config, servers = three_models(tmp_path, fake_engine)
    gone = fake_engine(model="gone")
    gone.stop()
    url = gone.base_url
    result = invoke("eval", "--config", config, "--models", "a", "--suite", "mt-bench", "--judge", url,
                    "--out", tmp_path / "run")  # fmt: skip
    assert one_error_line(result) == f"judge {url}: unreachable at {url} (connection refused)"
    assert servers["a"].chat_bodies() == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_fault_eval_interrupted_resumes_and_asks_nothing_twice(
    tmp_path: Path, fake_engine: FakeEngineFactory, cache: Path, signum: signal.Signals, code: int
) -> None:
    a, h = fake_engine(model="a", reply=REPLY_A), fake_engine(model="h", hang=True)
    j = fake_engine(model="j", reply="Rating: [[6]]")
    config = write_config(tmp_path, {"a": a, "h": h, "j": j}, [["a"]], aggregator="a", endpoint_settings=STEADY)
    out = tmp_path / "run"
    args = ("eval", "--config", config, "--models", "a,h", "--suite", "mt-bench", "--judge", "j", "--out", out,
            "--max-inflight", "4", "--resamples", "200")  # fmt: skip
    process = start(*args)
    wait_until(lambda: line_count(out / "answers" / "a.turn1.jsonl") == 3 and len(h.chat_bodies()) == 3,
               "a's 3 first answers, h's 3 first turns hanging", process)  # fmt: skip
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr and "resume with: moa-local eval --config" in stdout
    assert j.chat_bodies() == []  # the judge comes after every answer

    h.set(hang=False, reply=REPLY_B)
    result = invoke(*args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    first_turns = [b for b in a.chat_bodies() if len(b["messages"]) == 1]
    assert len(first_turns) == 3  # nothing answered was asked again
    for model in ("a", "h"):
        for turn in (1, 2):
            answered = [r["custom_id"] for r in records(out / "answers" / f"{model}.turn{turn}.jsonl")]
            assert sorted(answered) == [f"mt-bench-{q}.t{turn}" for q in (111, 81, 91)]
    assert len(j.chat_bodies()) == 2 * 3 * 2
    assert results_of(out)["aggregate"]["h"]["metrics"]["score"]["value"] == 6.0


def test_fault_a_rerun_with_other_settings_is_refused(tmp_path: Path, fake_engine: FakeEngineFactory,
                                                      cache: Path) -> None:  # fmt: skip
    config, _ = three_models(tmp_path, fake_engine, reply="[[5]]")
    out = tmp_path / "run"
    base = ("eval", "--config", config, "--models", "a", "--suite", "mt-bench", "--judge", "j", "--out", out)
    assert invoke(*base, "--resamples", "100").returncode == 0
    message = one_error_line(invoke(*base, "--seed", "9"))
    assert message == (
        f"{out} holds an evaluation with seed=0, not 9: rerun with the same settings, or use another --out"
    )


def test_fault_fake_temperature_reaches_every_answer_and_is_a_fixed_setting(
    tmp_path: Path, fake_engine: FakeEngineFactory, cache: Path
) -> None:
    """--temperature: the single model's call and the mixture's aggregator sample at it; the proposers keep
    their configured temperature; a rerun at another temperature is refused; the summary says which."""
    pytest.importorskip("lm_eval", reason="the ifeval suite needs the eval extra")
    config, servers = three_models(tmp_path, fake_engine)
    out = tmp_path / "run"
    base = ("eval", "--config", config, "--models", "a,moa", "--suite", "ifeval", "--out", out, "--resamples", "100")
    result = invoke(*base, "--temperature", "0.3")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert {body["temperature"] for body in servers["agg"].chat_bodies()} == {0.3}
    proposer_temperatures = [body.get("temperature") for body in servers["b"].chat_bodies()]
    assert proposer_temperatures and 0.3 not in proposer_temperatures  # b only proposes: its own sampling
    a_bodies = servers["a"].chat_bodies()  # a answers alone (0.3) and proposes for moa (its own)
    assert sum(body.get("temperature") == 0.3 for body in a_bodies) == 7
    assert results_of(out)["temperature"] == 0.3
    assert "every answer sampled at temperature 0.3" in (out / "summary.md").read_text()
    message = one_error_line(invoke(*base, "--temperature", "0.7"))
    assert message == (
        f"{out} holds an evaluation with temperature=0.3, not 0.7: rerun with the same settings, or use another --out"
    )
