"""Fake engines as separate processes, for chaos tests: killed for real, restarted on their port.

    engine = EngineProcess("p1-model")          # python -m tests.support.garbled_engine, on a free port
    engine.set(latency_ms=200)                  # the fake's Behavior, over HTTP (/fake/behavior)
    engine.garble("sse-broken-json")            # or an answer that is not the protocol (/fake/garble)
    engine.kill(); engine.restart()             # SIGKILL, then the same port again
    engine.stop()

Each process is the fake engine of `moa_local.testing` behind
`garbled_engine.py` (a superset of it), in a session of its own, with the
repository first on its PYTHONPATH. `EngineProcess` waits for `/health`
after every start (bounded) and never leaves a process behind once
stopped. `processes` starts several in parallel; `chat_requests` counts
the chat completions an engine has received since its start.

Left out on purpose: the gateway (the tests run it on a thread, to read
its metrics and tasks) and what traffic to send (`traffic.py`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EngineProcess:
    def __init__(
        self, model: str, *, tokens: int = 8, token_delay_ms: float = 0.0, port: int = 0, start: bool = True
    ) -> None:
        self.model = model
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._args = ["--model", model, "--tokens", str(tokens), "--token-delay-ms", str(token_delay_ms)]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (its stderr, read if it fails to start; closed in stop)
        self._proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)
        if start:
            self.start()

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "tests.support.garbled_engine", "--port", str(self.port), *self._args]
        self._proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"engine {self.model} exited at start: {self._log.read()[-2000:].decode()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"engine {self.model} did not serve on port {self.port} in {START_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def set(self, **behavior: Any) -> None:
        self.http.post("/fake/behavior", json=behavior).raise_for_status()

    def garble(self, mode: str) -> None:
        self.http.post("/fake/garble", json={"mode": mode}).raise_for_status()

    def reset(self) -> None:
        self.http.post("/fake/reset").raise_for_status()

    def chat_requests(self) -> int:
        records = self.http.get("/fake/requests").json()
        return sum(1 for r in records if r["path"] == "/v1/chat/completions")

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.http.get("/fake/events").json()
        return events

    def kill(self) -> None:
        """SIGKILL: the process dies at once, its connections reset, its port free."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.http.close()
        self._log.close()


def processes(models: Iterable[str], **options: Any) -> list[EngineProcess]:
    """Several engines, started in parallel (each start is mostly Python's imports)."""
    engines = [EngineProcess(model, start=False, **options) for model in models]
    for engine in engines:
        engine.spawn()
    for engine in engines:
        engine.wait_ready()
    return engines
