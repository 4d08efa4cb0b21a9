"""The `moa-local` group: its options shared by the commands, and the one place errors become lines.

Each command family lives in its own module (ask, gateway, engines, deploy,
bench) and registers on `main` when `moa_local.cli` imports it. A command
lets a `MoaError` (a bad config, an unreachable endpoint, a missed quorum)
propagate; the group prints it as one `Error: ...` line and exits 1, so a
traceback never reaches the user. Commands import the library lazily:
every command pays for the imports of this module and of the command
modules, none for another command's.
"""

from __future__ import annotations

from typing import Any

import click

from moa_local import __version__
from moa_local.errors import MoaError

CONFIG_OPTION = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The config file."
)


class CommandGroup(click.Group):
    """A click group that turns a `MoaError` from any of its commands into a `ClickException`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoaError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=CommandGroup)
@click.version_option(__version__, prog_name="moa-local")
def main() -> None:
    """moa-local: a local Mixture-of-Agents over OpenAI-compatible model servers."""
