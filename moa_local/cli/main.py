"""The `moa-local` command: a thin shell over the library.

User errors (a bad config, an unreachable endpoint, a missed quorum) print
one clear line and exit 1; a traceback never reaches the user.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from moa_local import __version__
from moa_local.cli.batch import batch as batch_command
from moa_local.config import Config, load_config
from moa_local.errors import MoaError


@click.group()
@click.version_option(__version__, prog_name="moa-local")
def main() -> None:
    """moa-local: a local Mixture-of-Agents over OpenAI-compatible model servers."""


def _load(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The config file.")
@click.option("--mixture", "model", default=None, help="Mixture (or endpoint) to ask; default: the first mixture.")
@click.option("--show-proposals", is_flag=True, help="Show each layer's answers on stderr as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="Print answer, usage, proposals and trace as one JSON object.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="The aggregator's max_tokens.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help="The aggregator's temperature.")
@click.argument("prompt")
def ask(
    config_path: str, model: str | None, show_proposals: bool, as_json: bool,
    max_tokens: int | None, temperature: float | None, prompt: str,
) -> None:  # fmt: skip
    """Ask a mixture one question and stream its answer."""
    from moa_local.cli.ask import ask as run_ask
    from moa_local.mixture.catalog import run_spec
    from moa_local.mixture.spec import Overrides

    config = _load(config_path)
    try:
        spec = run_spec(config, model, Overrides(temperature=temperature, max_tokens=max_tokens))
        asyncio.run(run_ask(config, spec, prompt, show_proposals=show_proposals, as_json=as_json))
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The config file.")
def check(config_path: str) -> None:
    """Validate the config and probe every endpoint: does it answer, which model does it serve?"""
    from moa_local.cli.check import check_endpoints

    config = _load(config_path)
    click.echo(f"{config_path}: valid ({len(config.endpoints)} endpoints, {len(config.mixtures)} mixtures)")
    if not asyncio.run(check_endpoints(config, click.echo)):
        raise click.ClickException("some endpoints are down (see above)")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The config file.")
@click.option("--host", default=None, help="Bind address (default: gateway.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: gateway.port).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.option("--log-content", is_flag=True, help="Debug: log each request's prompt and answer text.")
def serve(config_path: str, host: str | None, port: int | None, log_level: str, log_content: bool) -> None:
    """Serve every mixture and endpoint as a model over the OpenAI API."""
    from moa_local.api.server import run_gateway

    config = _load(config_path)
    try:
        run_gateway(config, host=host, port=port, log_level=log_level, log_content=log_content)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="The gateway's base URL.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between two reads of /metrics.")  # fmt: skip
@click.option("--once", is_flag=True, help="Print one table after one interval and exit.")
@click.option("--api-key", envvar="MOA_API_KEY", default=None, help="A gateway key, when it requires one.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds to wait for /metrics.")  # fmt: skip
def top(url: str, interval_s: float, once: bool, api_key: str | None, timeout_s: float) -> None:
    """Per endpoint: calls/s, median latency, tokens/s and errors, from the gateway's /metrics."""
    from moa_local.cli.top import run
    from moa_local.errors import MoaError

    try:
        run(url, interval_s=interval_s, once=once, api_key=api_key, timeout_s=timeout_s)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


@main.command("prometheus-config")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The config file.")
@click.option("--gateway", default=None, help="host:port Prometheus scrapes the gateway at (default: from the config).")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Scrape and rule evaluation interval, seconds.")  # fmt: skip
@click.option("--bearer-file", default=None, help="File with a gateway key, when the gateway requires one.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write here instead of standard output.")  # fmt: skip
def prometheus_config_command(
    config_path: str, gateway: str | None, interval_s: float, bearer_file: str | None, output: str | None
) -> None:
    """Print a Prometheus config that scrapes the gateway and every engine of a config."""
    from moa_local.config import load_config
    from moa_local.deploy.prometheus_config import prometheus_config, render
    from moa_local.errors import MoaError

    try:
        config = load_config(config_path)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    document = prometheus_config(config, gateway=gateway, interval_s=interval_s, bearer_file=bearer_file)
    text = render(document, config_path)
    if output is None:
        click.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)


# --- engine servers on this machine: up / down / status (launcher.py) ---

_CONFIG_OPTION = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The config file."
)
_RUN_DIR_OPTION = click.option(
    "--run-dir", default=None, type=click.Path(file_okay=False),
    help="Folder for PIDs and logs (default: ~/.cache/moa-local/run/<config name>).",
)  # fmt: skip


def _load_for_serving(config_path: str, run_dir: str | None) -> tuple[Config, Path]:
    from moa_local.deploy.launch_spec import default_run_dir

    return _load(config_path), Path(run_dir) if run_dir else default_run_dir(config_path)


@main.command()
@_CONFIG_OPTION
@_RUN_DIR_OPTION
@click.option("--only", "names", multiple=True, help="Start only this endpoint (repeatable).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=900.0, show_default=True,
              help="Seconds to wait for every server's /health.")  # fmt: skip
def up(config_path: str, run_dir: str | None, names: tuple[str, ...], timeout_s: float) -> None:
    """Start the engine server of every endpoint with a serve block and wait until all are healthy."""
    from moa_local.deploy import launcher

    config, folder = _load_for_serving(config_path, run_dir)
    try:
        records = launcher.up(config, folder, names=names or None, timeout_s=timeout_s, on_event=click.echo)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; the servers started by this command were stopped") from None
    click.echo(f"{len(records)} engine server(s) up; stop them with: moa-local down --config {config_path}")


@main.command()
@_CONFIG_OPTION
@_RUN_DIR_OPTION
@click.option("--only", "names", multiple=True, help="Stop only this endpoint (repeatable).")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")  # fmt: skip
def down(config_path: str, run_dir: str | None, names: tuple[str, ...], grace_s: float) -> None:
    """Stop the engine servers that `up` started for this config."""
    from moa_local.deploy import launcher

    config, folder = _load_for_serving(config_path, run_dir)
    try:
        outcome = launcher.down(config, folder, names=names or None, grace_s=grace_s)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    for name, result in outcome.items():
        click.echo(f"{name}: {result}")


@main.command()
@_CONFIG_OPTION
@_RUN_DIR_OPTION
def status(config_path: str, run_dir: str | None) -> None:
    """Show whether each endpoint's engine server runs and answers /health (exit 1 unless all are up)."""
    from moa_local.deploy import launcher

    config, folder = _load_for_serving(config_path, run_dir)
    try:
        rows = launcher.status(config, folder)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'endpoint':<16} {'state':<10} {'port':>5} {'pid':>8} {'memory':>9}  log")
    for row in rows:
        memory = f"{row.memory_bytes / 2**30:.2f} GiB" if row.memory_bytes else "-"
        click.echo(f"{row.name:<16} {row.state:<10} {row.port:>5} {row.pid or '-':>8} {memory:>9}  {row.log or '-'}")
    if any(row.state != "up" for row in rows):
        raise SystemExit(1)


# --- GPU deployment: compose file and memory plan (compose.py, plan.py) ---


@main.command()
@_CONFIG_OPTION
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False, writable=True),
              help="Write the compose file here (default: standard output).")  # fmt: skip
@click.option("--node", default=None, help="Write only the engines placed on this node (serve.node), ports published.")
def compose(config_path: str, out_path: str | None, node: str | None) -> None:
    """Write the Docker Compose file that runs a config's vLLM engines, gateway, Prometheus and Grafana.

    Run it from the repository's top level: the gateway image builds from the Dockerfile there.
    """
    import os

    from moa_local.deploy.compose import compose_document, render

    config = _load(config_path)
    base = os.path.dirname(os.path.abspath(out_path)) if out_path else os.getcwd()
    relative = Path(os.path.relpath(os.path.abspath(config_path), base)).as_posix()
    project_dir = Path(os.path.relpath(os.getcwd(), base)).as_posix()  # the Dockerfile and serving/ live here
    try:
        document = compose_document(config, config_path=relative, project_dir=project_dir, node=node)
        text = render(document, config_path=relative, node=node)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    if out_path is None:
        click.echo(text, nl=False)
        return
    try:
        Path(out_path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{out_path}: cannot write ({exc.strerror})") from None
    click.echo(f"wrote {out_path}", err=True)


@main.command()
@_CONFIG_OPTION
@click.option("--gpu-memory", default="80GiB", show_default=True, help="Memory of one GPU, e.g. 80GiB or 81559MiB.")
@click.option("--models-dir", default=None, type=click.Path(file_okay=False),
              help="Read each model from DIR/<model_path's last name> instead.")  # fmt: skip
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Prompt size assumed when checking context windows against the mixtures.")  # fmt: skip
def plan(config_path: str, gpu_memory: str, models_dir: str | None, prompt_tokens: int) -> None:
    """Check that every served model fits its GPUs (weights, KV cache, context windows); exit 1 if not."""
    from moa_local.deploy.plan import make_plan, parse_size, render_plan

    config = _load(config_path)
    try:
        memory = parse_size(gpu_memory)
    except ValueError as exc:
        raise click.ClickException(f"--gpu-memory: {exc}") from None
    result = make_plan(config, gpu_memory_bytes=memory, models_dir=models_dir, prompt_tokens=prompt_tokens)
    click.echo(render_plan(result, config_path), nl=False)
    if not result.fits:
        raise click.ClickException(f"{config_path}: {len(result.problems)} problem(s); see above")


# --- load benchmarks (bench.py) ---


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
    from moa_local.bench import runner as bench_module

    try:
        plan = bench_module.make_plan(
            url, models, Path(out), concurrency=concurrency, rate=rate, cpu_pids=cpu_pids, requests=requests,
            max_tokens=max_tokens, dataset=dataset, duration_limit_s=duration_limit_s, engine_metrics=engine_metrics,
            timeout_s=timeout_s, warmup=warmup, api_key=api_key, trace=not no_trace, temperature=temperature,
            seed=seed,
        )  # fmt: skip
        result = bench_module.run(plan, quiet=quiet)
    except MoaError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
    failed = sum(segment.summary.errors for segment in result.segments)
    click.echo(f"{len(result.segments)} segment(s), {failed} failed request(s); see {Path(out) / 'summary.md'}")


main.add_command(batch_command)
