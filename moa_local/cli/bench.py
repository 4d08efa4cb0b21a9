"""`moa-local bench`: load models at several concurrencies or arrival rates (over `moa_local.bench.runner`)."""

from __future__ import annotations

from pathlib import Path

import click

from moa_local.cli.main import main


@main.command()
@click.option("--url", required=True, help="Base URL of the gateway (or of an engine, for a direct baseline).")
@click.option("--model", "models", multiple=True, required=True, help="Model to load (repeatable).")
@click.option("--concurrency", default=None, help="Closed-loop levels, e.g. 1,4,16 (default 1,4,16 unless --rate).")
@click.option("--rate", default=None, help="Open-loop Poisson arrival rates in requests/s, e.g. 0.5,1.")
@click.option("--requests", type=click.IntRange(min=1), default=32, show_default=True, help="Requests per level.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="max_tokens of each request (for a mixture: its aggregator's).")  # fmt: skip
@click.option("--dataset", default="builtin", show_default=True, help="builtin, mt-bench, or a .jsonl file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the results.")
@click.option("--duration-limit", "duration_limit_s", type=click.FloatRange(min=0.1), default=None,
              help="Seconds per level after which no new request starts.")  # fmt: skip
@click.option("--engine-metrics", multiple=True, help="An engine's URL or /metrics URL to read (repeatable).")
@click.option("--cpu-pid", "cpu_pids", multiple=True,
              help="LABEL=PID of a local process (the gateway) whose CPU time to report (repeatable).")  # fmt: skip
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="Seconds one request may take.")  # fmt: skip
@click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True,
              help="Unmeasured requests per model first.")  # fmt: skip
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help="Sent with every request.")
@click.option("--no-trace", is_flag=True, help="Do not ask for the gateway's trace (for an engine called directly).")
@click.option("--api-key", envvar="MOA_API_KEY", default=None, help="A key, when the server requires one.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the open-loop arrival times.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench(
    url: str, models: tuple[str, ...], concurrency: str | None, rate: str | None, requests: int, max_tokens: int,
    dataset: str, out: str, duration_limit_s: float | None, engine_metrics: tuple[str, ...], cpu_pids: tuple[str, ...],
    timeout_s: float, warmup: int, temperature: float | None, no_trace: bool, api_key: str | None, seed: int,
    quiet: bool,
) -> None:  # fmt: skip
    """Load models at several concurrencies (or arrival rates) and write results.json, summary.md and plots."""
    from moa_local.bench import runner

    try:
        plan = runner.make_plan(
            url, models, Path(out), concurrency=concurrency, rate=rate, cpu_pids=cpu_pids, requests=requests,
            max_tokens=max_tokens, dataset=dataset, duration_limit_s=duration_limit_s, engine_metrics=engine_metrics,
            timeout_s=timeout_s, warmup=warmup, api_key=api_key, trace=not no_trace, temperature=temperature,
            seed=seed,
        )  # fmt: skip
        result = runner.run(plan, quiet=quiet)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
    failed = sum(segment.summary.errors for segment in result.segments)
    click.echo(f"{len(result.segments)} segment(s), {failed} failed request(s); see {Path(out) / 'summary.md'}")
