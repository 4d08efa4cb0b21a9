"""Starting one engine process, and waiting until engines answer `/health`.

`check_port_free` refuses a taken port before anything starts; `prepare`
makes the engine's folders (its TMPDIR private, see `launch_spec`) and
rotates its log; `spawn` starts the command as a session leader with the
marker in its environment; `wait_healthy` polls each engine's `/health`
and reports one that exits or misses the deadline with the tail of its log.
Left out: which engines to start, the state file and stopping (`launcher`).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from moa_local.deploy import processes
from moa_local.deploy.launch_spec import LaunchSpec, make_private_dir
from moa_local.deploy.run_state import EngineRecord
from moa_local.errors import ServingError

PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 20
Events = Callable[[str], None]


def check_port_free(spec: LaunchSpec) -> None:
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((spec.host, spec.port))
        except OSError as exc:
            raise ServingError(
                f"endpoint {spec.name}: port {spec.port} on {spec.host} is not available ({exc.strerror}); "
                "stop what listens there or change the endpoint's base_url"
            ) from None


def prepare(spec: LaunchSpec) -> None:
    """The engine's folders and a fresh log (the previous one kept as .log.1)."""
    shutil.rmtree(spec.env["TMPDIR"], ignore_errors=True)  # private to this endpoint, which is not running
    make_private_dir(Path(spec.env["TMPDIR"]))  # refuses what someone else left there
    for folder in ("VLLM_CACHE_ROOT", "MPLCONFIGDIR"):
        Path(spec.env[folder]).mkdir(mode=0o700, parents=True, exist_ok=True)
    if spec.log.exists():
        spec.log.replace(spec.log.with_suffix(".log.1"))


def spawn(spec: LaunchSpec, marker: str) -> int:
    env = {**os.environ, **spec.env, processes.MARKER_ENV: marker}
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(spec.log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        # setsid: the engine leads its own process group (Ctrl-C in our terminal does not reach it,
        # and a SIGKILL after the grace period reaches its workers too).
        # setsigmask=(): the engine starts with no signal blocked, whatever our caller's mask.
        return os.posix_spawn(
            spec.command[0], list(spec.command), env, file_actions=actions, setsid=True, setsigmask=()
        )
    except OSError as exc:
        raise ServingError(f"endpoint {spec.name}: cannot start {spec.command[0]}: {exc.strerror}") from None


def healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def exit_code(pid: int) -> int | None:
    """The exit code if our child `pid` has exited (and reap it), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if processes.is_alive(pid) else -1
    return os.waitstatus_to_exitcode(status) if done == pid else None


def wait_healthy(records: Sequence[EngineRecord], timeout_s: float, say: Events) -> None:
    started = time.monotonic()
    pending = {record.name: record for record in records}
    with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:  # no proxy for our own servers
        while pending:
            for name, record in list(pending.items()):
                code = exit_code(record.pid)
                if code is not None:
                    tail = processes.log_tail(Path(record.log), LOG_TAIL_LINES)
                    raise ServingError(
                        f"endpoint {name}: the engine exited with status {code} during start-up; "
                        f"last lines of {record.log}:\n{tail}"
                    )
                if healthy(client, record.health_url):
                    say(f"{name}: up on port {record.port} after {time.monotonic() - started:.1f} s")
                    del pending[name]
            if pending and time.monotonic() - started > timeout_s:
                name, record = next(iter(pending.items()))
                tail = processes.log_tail(Path(record.log), LOG_TAIL_LINES)
                raise ServingError(
                    f"endpoint {name}: not healthy after {timeout_s:.0f} s; last lines of {record.log}:\n{tail}"
                )
            if pending:
                time.sleep(0.5)  # poll interval between health probes
