"""The evaluation's one error: `EvalError`, a `MoaError` the CLI prints as one line.

Raised when an evaluation cannot run as asked: an unknown suite, a model
not in the config, an unreachable judge or one that never rates, data
that cannot be fetched, an output folder holding another run, a missing
optional package. Per-item failures are not errors: a failed answer or an
unrated judgment is counted and reported.
"""

from __future__ import annotations

from moa_local.errors import MoaError


class EvalError(MoaError):
    """An evaluation cannot run as asked; the message says what to change."""
