"""Evaluation: does a mixture beat its best single model? Suites, scoring, statistics and the report.

    settings = Settings(suite="ifeval", models=("qwen", "moa-cpu"), kinds={...}, limit=200)
    results = await evaluate(folder, settings, answer=execute, judge=None)   # resumable
    results = rescore(folder)                                                # from the folder only

Generation and judging run through the batch runner (`jobs/`), with the
executors injected by the caller; imports go to `jobs/` and the base
modules only.
"""

from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.generation import ViewFactory
from moa_local.evaluation.judge import Judge, JudgeClient, probe, resolve_judge
from moa_local.evaluation.manifest import Settings, read_settings
from moa_local.evaluation.run import evaluate, rescore
from moa_local.evaluation.suites import SUITES, get_suite

__all__ = [
    "SUITES",
    "EvalError",
    "Judge",
    "JudgeClient",
    "Settings",
    "ViewFactory",
    "evaluate",
    "get_suite",
    "probe",
    "read_settings",
    "rescore",
    "resolve_judge",
]
