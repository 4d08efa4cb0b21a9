"""Engine servers on this machine: `up`, `down` and `status` (over `moa_local.deploy.launcher`)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from moa_local.cli.main import CONFIG_OPTION, main

if TYPE_CHECKING:
    from moa_local.config import Config

RUN_DIR_OPTION = click.option(
    "--run-dir", default=None, type=click.Path(file_okay=False),
    help="Folder for PIDs and logs (default: ~/.cache/moa-local/run/<config name>).",
)  # fmt: skip


def _load_for_serving(config_path: str, run_dir: str | None) -> tuple[Config, Path]:
    from moa_local.config import load_config
    from moa_local.deploy.launch_spec import default_run_dir

    return load_config(config_path), Path(run_dir) if run_dir else default_run_dir(config_path)


@main.command()
@CONFIG_OPTION
@RUN_DIR_OPTION
@click.option("--only", "names", multiple=True, help="Start only this endpoint (repeatable).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=900.0, show_default=True,
              help="Seconds to wait for every server's /health.")  # fmt: skip
def up(config_path: str, run_dir: str | None, names: tuple[str, ...], timeout_s: float) -> None:
    """Start the engine server of every endpoint with a serve block and wait until all are healthy."""
    from moa_local.deploy import interruption, launcher

    config, folder = _load_for_serving(config_path, run_dir)
    try:
        records = launcher.up(config, folder, names=names or None, timeout_s=timeout_s, on_event=click.echo)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, interruption.Interrupted) else signal.SIGINT
        raise click.ClickException(
            f"interrupted ({signal.Signals(signum).name}); the servers started by this command were stopped"
        ) from None
    click.echo(f"{len(records)} engine server(s) up; stop them with: moa-local down --config {config_path}")


@main.command()
@CONFIG_OPTION
@RUN_DIR_OPTION
@click.option("--only", "names", multiple=True, help="Stop only this endpoint (repeatable).")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")  # fmt: skip
def down(config_path: str, run_dir: str | None, names: tuple[str, ...], grace_s: float) -> None:
    """Stop the engine servers that `up` started for this config."""
    from moa_local.deploy import launcher

    config, folder = _load_for_serving(config_path, run_dir)
    for name, result in launcher.down(config, folder, names=names or None, grace_s=grace_s).items():
        click.echo(f"{name}: {result}")


@main.command()
@CONFIG_OPTION
@RUN_DIR_OPTION
def status(config_path: str, run_dir: str | None) -> None:
    """Show whether each endpoint's engine server runs and answers /health (exit 1 unless all are up)."""
    from moa_local.deploy import launcher

    config, folder = _load_for_serving(config_path, run_dir)
    rows = launcher.status(config, folder)
    click.echo(f"{'endpoint':<16} {'state':<10} {'port':>5} {'pid':>8} {'memory':>9}  log")
    for row in rows:
        memory = f"{row.memory_bytes / 2**30:.2f} GiB" if row.memory_bytes else "-"
        click.echo(f"{row.name:<16} {row.state:<10} {row.port:>5} {row.pid or '-':>8} {memory:>9}  {row.log or '-'}")
    if any(row.state != "up" for row in rows):
        raise SystemExit(1)
