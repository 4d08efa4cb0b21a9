"""An evaluation folder's record of itself: `eval.json` (the settings) and `items.jsonl` (the items asked).

The first run writes both; a rerun with the same folder reads them back,
so it asks the same items and resumes. A rerun must keep the suite, seed,
limit, generation cap and judge (a different one is refused, naming the
key: use another folder); it may add models and name a baseline mixture.
`--score-only` needs nothing but the folder; with `--models` it reports
on some of the folder's models only (`only`), and `eval.json` keeps them all.

Left out on purpose: the answers (`generation.py` owns those files).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.suite import Item

MANIFEST = "eval.json"
ITEMS = "items.jsonl"
FIXED = ("suite", "seed", "limit", "max_tokens", "temperature", "judge", "judge_model")
Kind = Literal["mixture", "endpoint"]


@dataclass(frozen=True)
class Settings:
    suite: str
    models: tuple[str, ...]
    kinds: dict[str, Kind]  # model -> mixture or endpoint
    seed: int = 0
    limit: int | None = None
    max_tokens: int | None = None  # None: the suite's default
    temperature: float | None = None  # None: each model's own (an engine's default, a mixture's aggregator's)
    judge: str | None = None  # as given: an endpoint name or a URL
    judge_model: str | None = None
    judge_contestants: tuple[str, ...] = ()  # models of the run that are the judge or use its endpoint
    resamples: int = 10_000
    baseline: str | None = None  # a mixture of the run every other mixture is also compared with

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["models"], data["judge_contestants"] = list(self.models), list(self.judge_contestants)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Settings:
        try:
            return cls(
                suite=str(data["suite"]), models=tuple(data["models"]), kinds=dict(data["kinds"]),
                seed=int(data["seed"]), limit=data.get("limit"), max_tokens=data.get("max_tokens"),
                temperature=data.get("temperature"),
                judge=data.get("judge"), judge_model=data.get("judge_model"),
                judge_contestants=tuple(data.get("judge_contestants") or ()),
                resamples=int(data.get("resamples", 10_000)), baseline=data.get("baseline"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalError(f"{where}: not an evaluation record of this version ({exc})") from None


def read_settings(folder: Path) -> Settings | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: cannot read ({exc})") from None
    return Settings.from_json(data, str(path))


def merge(old: Settings | None, new: Settings, folder: Path) -> Settings:
    """The settings to run with: `new`, checked against the folder's; models added to the folder's."""
    if old is None:
        return new
    for key in FIXED:
        if getattr(old, key) != getattr(new, key):
            raise EvalError(
                f"{folder} holds an evaluation with {key}={json.dumps(getattr(old, key))}, not "
                f"{json.dumps(getattr(new, key))}: rerun with the same settings, or use another --out"
            )
    models = tuple(dict.fromkeys([*old.models, *new.models]))
    return replace(new, models=models, kinds={**old.kinds, **new.kinds}, baseline=new.baseline or old.baseline)


def only(settings: Settings, models: list[str]) -> Settings:
    """The settings narrowed to some of the run's models, in the run's order (a report on part of a folder)."""
    if not models:
        raise EvalError(f"no model named (models of this run: {', '.join(settings.models)})")
    unknown = [model for model in models if model not in settings.models]
    if unknown:
        raise EvalError(f"{', '.join(repr(m) for m in unknown)} is not a model of this run "
                        f"(models: {', '.join(settings.models)})")  # fmt: skip
    kept = tuple(model for model in settings.models if model in models)
    baseline = settings.baseline if settings.baseline in kept else None
    contestants = tuple(model for model in settings.judge_contestants if model in kept)
    return replace(settings, models=kept, baseline=baseline, judge_contestants=contestants)


def write_settings(folder: Path, settings: Settings) -> None:
    _write(folder / MANIFEST, json.dumps(settings.as_json(), indent=2) + "\n")


def read_items(folder: Path) -> list[Item] | None:
    path = folder / ITEMS
    if not path.exists():
        return None
    try:
        return [Item.from_json(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(f"{path}: cannot read the items ({exc})") from None


def write_items(folder: Path, items: list[Item]) -> None:
    _write(folder / ITEMS, "".join(json.dumps(item.as_json(), ensure_ascii=False) + "\n" for item in items))


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        raise EvalError(f"{path}: cannot write ({exc.strerror})") from None
