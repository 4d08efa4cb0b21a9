"""`moa-local batch`: an OpenAI Batch JSONL file through the mixtures, with no server; resumable.

Opens an endpoint pool and a pipeline as `ask` does and runs the
`BatchRunner` over them with `api/completion.complete` as the executor, so
each output body is what the gateway would have answered. The errors file
defaults to the output's name with `.errors.jsonl` (`out.jsonl` ->
`out.errors.jsonl`). Progress: a rich bar when stdout is a terminal,
otherwise one plain line about every 5 s and one at the end; then the
summary (counts, wall time, tokens, throughput, each endpoint's share of
the engine time). Ctrl-C or SIGTERM cancels the requests in flight,
leaves complete lines only, and prints the command that resumes (the
same one).

Calls are sent with priority batch, but this process has no interactive
calls to make room for, so `gateway.batch_share` does not apply here: a
batch may use all of each endpoint's `max_concurrency`. `--max-inflight`
defaults to the sum of the endpoints' `max_concurrency` (at most
`gateway.max_inflight`): enough requests to keep every engine busy.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moa_local.cli import termination
from moa_local.cli.main import CONFIG_OPTION, main

if TYPE_CHECKING:
    from rich.progress import Progress as Bar

    from moa_local.config import Config
    from moa_local.jobs.runner import BatchRunner, Progress
    from moa_local.mixture.pipeline import Pipeline
    from moa_local.mixture.trace import RequestTrace

PLAIN_EVERY_S = 5.0


@main.command()
@CONFIG_OPTION
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Answers, one JSON line per request (appended to; rerun to resume).")  # fmt: skip
@click.option("--errors", "errors_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Failed and invalid lines (default: OUTPUT with .errors.jsonl).")  # fmt: skip
@click.option("--max-inflight", type=click.IntRange(min=1), default=None,
              help="Requests in flight at once (default: the sum of the endpoints' max_concurrency).")  # fmt: skip
def batch(
    config_path: str, input_path: Path, output: Path, errors_path: Path | None, max_inflight: int | None
) -> None:
    """Answer every request of an OpenAI Batch JSONL file, without a server; rerun the same command to resume."""
    from moa_local.config import load_config
    from moa_local.errors import MoaError
    from moa_local.jobs.format import check_input

    errors_path = errors_path or default_errors_path(output)
    if len({input_path.resolve(), output.resolve(), errors_path.resolve()}) < 3:
        raise click.ClickException("the input, output and errors files must be three different files")
    try:
        config = load_config(config_path)
        total = check_input(input_path)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    slots = sum(endpoint.max_concurrency for endpoint in config.endpoints.values())
    inflight = max_inflight or min(config.gateway.max_inflight, slots)
    view = _Plain() if not sys.stdout.isatty() else _Rich(total)
    job = _Job(config, input_path, output, errors_path, inflight, view)
    try:
        progress = termination.run(job.run(total))
    except KeyboardInterrupt as exc:
        view.close(job.runner.progress())
        click.echo(_summary(job.runner, output, errors_path))
        resume = _command(config_path, input_path, output, errors_path, max_inflight)
        click.echo(f"interrupted: the files hold complete lines only; resume with: {resume}")
        raise click.exceptions.Exit(termination.exit_code(exc)) from None
    except MoaError as exc:
        view.close(job.runner.progress())
        raise click.ClickException(str(exc)) from None
    view.close(progress)
    click.echo(_summary(job.runner, output, errors_path))


def default_errors_path(output: Path) -> Path:
    stem = output.name.removesuffix(".jsonl")
    return output.with_name(f"{stem}.errors.jsonl")


class _Job:
    """The pool, pipeline and runner of one `batch` command."""

    def __init__(
        self, config: Config, input_path: Path, output: Path, errors: Path, max_inflight: int, view: _View
    ) -> None:
        from moa_local.jobs.result_file import ResultFile
        from moa_local.jobs.runner import BatchRunner

        self.config = config
        self.input_path = input_path
        self.pipeline: Pipeline | None = None
        self.runner = BatchRunner(
            self.execute, ResultFile(output), ResultFile(errors), max_inflight=max_inflight, on_progress=view.update
        )

    async def execute(self, body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        from moa_local.api.completion import complete

        assert self.pipeline is not None, "the pool is not open"
        return await complete(self.config, self.pipeline, body, request_id, priority="batch", on_trace=self._trace)

    def _trace(self, trace: RequestTrace) -> None:
        self.runner.add_trace(trace.as_dict())

    async def run(self, total: int) -> Progress:
        from moa_local.engines.pool import EndpointPool
        from moa_local.jobs.format import read_input
        from moa_local.metrics import Metrics
        from moa_local.mixture.pipeline import Pipeline

        metrics = Metrics()
        async with EndpointPool(self.config.endpoints, metrics, batch_share=1.0) as pool:
            self.pipeline = Pipeline(pool, metrics)
            progress = await self.runner.run(read_input(self.input_path), total)
        self.runner.output.create()  # an empty output file when every line failed
        return progress


class _View:
    def update(self, progress: Progress) -> None: ...

    def close(self, progress: Progress) -> None: ...


class _Plain(_View):
    """One line about every 5 s, and one at the end."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def update(self, progress: Progress) -> None:
        if time.monotonic() - self.last >= PLAIN_EVERY_S:
            self.last = time.monotonic()
            click.echo(progress_line(progress))

    def close(self, progress: Progress) -> None:
        click.echo(progress_line(progress))


class _Rich(_View):
    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        columns = (
            TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[errors]} errors"),
            TextColumn("{task.fields[rates]}"), TextColumn("ETA"), TimeRemainingColumn(),
        )  # fmt: skip
        self.bar: Bar = Bar(*columns)
        self.task = self.bar.add_task("batch", total=total, errors=0, rates="")
        self.bar.start()

    def update(self, progress: Progress) -> None:
        rates = f"{progress.lines_per_s:.1f} lines/s, {progress.tokens_per_s:.0f} tokens/s"
        self.bar.update(self.task, completed=progress.already + progress.finished, errors=progress.errors, rates=rates)

    def close(self, progress: Progress) -> None:
        self.update(progress)
        self.bar.stop()


def progress_line(progress: Progress) -> str:
    done = progress.already + progress.finished
    eta = progress.eta_s
    return (
        f"batch: {done}/{progress.total} lines, {progress.errors} errors, {progress.lines_per_s:.1f} lines/s, "
        f"{progress.tokens_per_s:.0f} tokens/s, ETA {'-' if eta is None else _duration(eta)}"
    )


def _summary(runner: BatchRunner, output: Path, errors: Path) -> str:
    p = runner.progress()
    lines = [
        f"{p.finished} lines in {p.elapsed_s:.1f} s ({p.lines_per_s:.1f} lines/s): {p.ok} answered -> {output}, "
        f"{p.failed} failed + {p.invalid} invalid -> {errors}"
        + (f"; {p.already} done by an earlier run" if p.already else ""),
        f"tokens: {p.prompt_tokens} prompt + {p.completion_tokens} completion "
        f"({p.tokens_per_s:.0f} generated tokens/s)",
    ]
    engine_total = sum(p.engine_s.values())
    if engine_total > 0:
        shares = ", ".join(
            f"{name} {seconds:.1f} s ({seconds / engine_total:.0%})" for name, seconds in sorted(p.engine_s.items())
        )
        lines.append(f"engine time: {shares}")
    for result in (runner.output, runner.errors):
        if result.dropped:
            lines.append(f"{result.path}: dropped a torn last line ({result.dropped} bytes); its request ran again")
    return "\n".join(lines)


def _command(config: str, input_path: Path, output: Path, errors: Path, max_inflight: int | None) -> str:
    """The command that resumes this one (the same command, spelled out)."""
    words = ["moa-local", "batch", "--config", config, str(input_path), "-o", str(output)]
    if errors != default_errors_path(output):
        words += ["--errors", str(errors)]
    if max_inflight is not None:
        words += ["--max-inflight", str(max_inflight)]
    return shlex.join(words)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
