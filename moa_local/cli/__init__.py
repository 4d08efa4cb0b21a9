"""The `moa-local` command line: the `main` group and one module per command family.

Importing a command module registers its commands on `main`; each imports
`main` from `cli/main.py` itself, so the order here does not matter and
nothing imports this package's face from inside it.
"""

from moa_local.cli import ask, batch, bench, deploy, engines, eval, gateway  # noqa: F401  (importing registers their commands)
from moa_local.cli.main import main

__all__ = ["main"]
