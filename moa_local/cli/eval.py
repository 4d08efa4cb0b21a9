"""`moa-local eval`: does a mixture beat its best single model? Suites, scores with intervals, a report.

    moa-local eval --config F --models qwen,moa-cpu --suite ifeval --limit 200 --out DIR
    moa-local eval --out DIR --score-only            # rescore and report from DIR, nothing generated
    moa-local eval --out DIR --score-only --models qwen,moa-cpu    # ... on some of its models only

Opens an endpoint pool and a pipeline as `batch` does and hands
`evaluation.evaluate` `api/completion.complete` as the executor (priority
batch), so every answer is what the gateway would have answered; a judged
suite also gets a `JudgeClient` for `--judge` (an endpoint of the config
or an OpenAI-compatible URL), checked to answer before anything runs.
Progress per round as `batch` shows it. Ctrl-C or SIGTERM keeps every
finished answer and prints the command that resumes (the same one). Bad
input (an unknown suite, a model not in the config, an unreachable judge,
a judge that never rates) is one `Error:` line.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moa_local.cli import termination
from moa_local.cli.main import main

if TYPE_CHECKING:
    from moa_local.config import Config
    from moa_local.evaluation import Judge, Settings
    from moa_local.jobs import Progress
    from moa_local.mixture.pipeline import Pipeline

PLAIN_EVERY_S = 5.0


@main.command("eval")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="The config file.")
@click.option("--models", default=None, help="Comma-separated mixtures and endpoints of the config to compare.")
@click.option("--suite", default=None, help="ifeval, math, mt-bench or alpaca-eval.")
@click.option("--judge", default=None, help="For mt-bench and alpaca-eval: an endpoint of the config or a URL.")
@click.option(
    "--judge-model", default=None, help="The judge's served model (default: the endpoint's, or the URL's only one)."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="A seeded subset of this many items.")
@click.option("--seed", type=int, default=0, show_default=True, help="Items, sampling seed and bootstrap seed.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The folder for requests, answers, judgments and the report (rerun to resume).")  # fmt: skip
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Cap per answer (default: the suite's).")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None,
              help="Every answer's temperature (a mixture's aggregator's); default: each model's own.")  # fmt: skip
@click.option("--resamples", type=click.IntRange(min=100), default=10_000, show_default=True,
              help="Bootstrap resamples per interval.")  # fmt: skip
@click.option("--max-inflight", type=click.IntRange(min=1), default=None,
              help="Requests in flight at once (default: the sum of the endpoints' max_concurrency).")  # fmt: skip
@click.option("--baseline", default=None,
              help="A mixture every other mixture of the run is also compared with.")  # fmt: skip
@click.option("--score-only", is_flag=True,
              help="Report again from --out, nothing generated or judged (with --models: those only).")  # fmt: skip
def eval_(
    config_path: str | None, models: str | None, suite: str | None, judge: str | None, judge_model: str | None,
    limit: int | None, seed: int, out: Path, max_tokens: int | None, temperature: float | None, resamples: int,
    max_inflight: int | None, baseline: str | None, score_only: bool,
) -> None:  # fmt: skip
    """Score mixtures and single models on one suite, with confidence intervals and paired verdicts."""
    from moa_local.evaluation import rescore

    if score_only:
        _show(rescore(out, _names(models) if models else None), out)
        return
    missing = [
        flag for flag, value in (("--config", config_path), ("--models", models), ("--suite", suite)) if not value
    ]
    if missing:
        raise click.UsageError(f"{', '.join(missing)} required (or --score-only to report from --out)")
    assert config_path and models and suite
    config, settings, found = _settings(
        config_path, models, suite, judge, judge_model, limit, seed, max_tokens, temperature, resamples, baseline
    )
    slots = sum(endpoint.max_concurrency for endpoint in config.endpoints.values())
    inflight = max_inflight or min(config.gateway.max_inflight, slots)
    job = _Job(config, found)
    try:
        results = termination.run(job.run(out, settings, inflight))
    except KeyboardInterrupt as exc:
        words = ["moa-local", "eval", *sys.argv[2:]] if sys.argv[1:2] == ["eval"] else ["moa-local", "eval", "..."]
        click.echo(f"interrupted: {out} holds every finished answer; resume with: {shlex.join(words)}")
        raise click.exceptions.Exit(termination.exit_code(exc)) from None
    _show(results, out)


def _settings(
    config_path: str, models: str, suite_name: str, judge: str | None, judge_model: str | None, limit: int | None,
    seed: int, max_tokens: int | None, temperature: float | None, resamples: int, baseline: str | None = None,
) -> tuple[Config, Settings, Judge | None]:  # fmt: skip
    from moa_local.config import load_config
    from moa_local.evaluation import EvalError, Settings, get_suite, probe, resolve_judge

    config = load_config(config_path)
    suite = get_suite(suite_name)
    names = _names(models)
    for name in names:
        if name not in config.mixtures and name not in config.endpoints:
            raise EvalError(f"model '{name}' is not in the config (known: {', '.join(config.model_names())})")
    if baseline is not None and baseline not in config.mixtures:
        known = ", ".join(config.mixtures)
        raise EvalError(f"--baseline '{baseline}' is not a mixture of the config (mixtures: {known})")
    kinds: dict[str, Any] = {name: "mixture" if name in config.mixtures else "endpoint" for name in names}
    found = None
    if suite.judged:
        if not judge:
            raise EvalError(f"the {suite.name} suite needs a judge: --judge ENDPOINT|URL")
        found = asyncio.run(probe(resolve_judge(judge, config, judge_model)))
    elif judge:
        click.echo(f"note: the {suite.name} suite has no judge; --judge is ignored", err=True)
        judge = judge_model = None
    settings = Settings(
        suite=suite.name, models=tuple(names), kinds=kinds, seed=seed, limit=limit, max_tokens=max_tokens,
        temperature=temperature, judge=judge, judge_model=found.model if found else None, resamples=resamples,
        judge_contestants=tuple(contestants(config, found, names)) if found else (), baseline=baseline,
    )  # fmt: skip
    for warning in ([f"warning: the judge ({judge}) is also a contestant: {', '.join(settings.judge_contestants)}"]
                    if settings.judge_contestants else []):  # fmt: skip
        click.echo(warning, err=True)
    return config, settings, found


def contestants(config: Config, judge: Judge, names: list[str]) -> list[str]:
    """The models of the run that are the judge, or use the judge's endpoint (a URL matches by base URL and model)."""
    same = {name for name, e in config.endpoints.items()
            if name == judge.endpoint or (e.base_url == judge.base_url and e.model == judge.model)}  # fmt: skip
    found = []
    for name in names:
        mixture = config.mixtures.get(name)
        used = {name} if mixture is None else {a.endpoint for layer in mixture.layers for a in layer.agents}
        if mixture is not None:
            used.add(mixture.aggregator.endpoint)
        if used & same:
            found.append(name)
    return found


class _Job:
    """The pool, pipeline and judge client of one `eval` command."""

    def __init__(self, config: Config, judge: Judge | None) -> None:
        self.config = config
        self.judge = judge
        self.pipeline: Pipeline | None = None

    async def execute(self, body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        from moa_local.api.completion import complete

        assert self.pipeline is not None, "the pool is not open"
        return await complete(self.config, self.pipeline, body, request_id, priority="batch")

    async def run(self, out: Path, settings: Settings, inflight: int) -> dict[str, Any]:
        from contextlib import AsyncExitStack

        from moa_local.engines.pool import EndpointPool
        from moa_local.evaluation import JudgeClient, evaluate
        from moa_local.metrics import Metrics
        from moa_local.mixture.pipeline import Pipeline

        metrics = Metrics()
        async with AsyncExitStack() as stack:
            pool = await stack.enter_async_context(EndpointPool(self.config.endpoints, metrics, batch_share=1.0))
            self.pipeline = Pipeline(pool, metrics)
            judge = await stack.enter_async_context(JudgeClient(self.judge)) if self.judge else None
            return await evaluate(out, settings, answer=self.execute, judge=judge, max_inflight=inflight, views=views)


def views(label: str, total: int) -> tuple[Callable[[Progress], None], Callable[[Progress], None]]:
    """A rich bar on a terminal, else a plain line about every 5 s and one at the end."""
    from moa_local.cli.batch import progress_line

    if not sys.stdout.isatty():
        last = [time.monotonic()]

        def update(progress: Progress) -> None:
            if time.monotonic() - last[0] >= PLAIN_EVERY_S:
                last[0] = time.monotonic()
                click.echo(f"{label}: {progress_line(progress)}")

        return update, lambda progress: click.echo(f"{label}: {progress_line(progress)}")
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    bar = Bar(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[errors]} errors"),
              TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    task = bar.add_task(label, total=total, errors=0)
    bar.start()

    def show(progress: Progress) -> None:
        bar.update(task, completed=progress.already + progress.finished, errors=progress.errors)

    def close(progress: Progress) -> None:
        show(progress)
        bar.stop()

    return show, close


def _names(models: str) -> list[str]:
    names = [name.strip() for name in models.split(",") if name.strip()]
    if not names:
        raise click.ClickException(f"--models {models!r} names no model: give mixtures or endpoints, comma-separated")
    return names


def _show(results: dict[str, Any], out: Path) -> None:
    from moa_local.evaluation.summary import interval, sentence

    metric = results["metrics"][0]
    for model in results["models"]:
        estimate = results["aggregate"][model["name"]]["metrics"][metric["name"]]
        click.echo(f"{model['name']}: {metric['label']} {interval(estimate, metric['unit'])}")
    for comparison in [*results["comparisons"], *results.get("baseline_comparisons", [])]:
        if comparison["metric"] == metric["name"]:
            click.echo(sentence(comparison, results["metrics"]).replace("**", ""))
    for warning in results["warnings"]:
        click.echo(f"warning: {warning}")
    click.echo(f"report: {out / 'summary.md'}, {out / 'results.json'}")
