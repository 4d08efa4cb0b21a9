"""The suites by name: `ifeval`, `math`, `mt-bench`, `alpaca-eval`."""

from __future__ import annotations

from collections.abc import Callable

from moa_local.evaluation.alpaca import AlpacaEval
from moa_local.evaluation.arithmetic import Arithmetic
from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.ifeval import IfEval
from moa_local.evaluation.mt_bench import MtBench
from moa_local.evaluation.suite import Suite

SUITES: dict[str, Callable[[], Suite]] = {
    "ifeval": IfEval,
    "math": Arithmetic,
    "mt-bench": MtBench,
    "alpaca-eval": AlpacaEval,
}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]()
    except KeyError:
        raise EvalError(f"unknown suite '{name}' (known: {', '.join(SUITES)})") from None
