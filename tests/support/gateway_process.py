"""The gateway as its own process (`python -m moa_local serve`), for runs that measure it: RSS, log, metrics.

    gateway = GatewayProcess(raw_config, log_path)   # writes the config, starts, waits for /health
    gateway.rss_bytes(); gateway.metrics(); gateway.tracebacks()
    gateway.stop()

Its output (stdout and stderr, log level info) goes to `log_path`, where
`tracebacks` counts the tracebacks. `metrics` reads `/metrics` into a
dict keyed by sample name and sorted labels. The process runs in a session
of its own and is stopped with SIGTERM (SIGKILL if it lingers).

Left out on purpose: the engines (`engine_processes.py`) and the traffic
(`traffic.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.engine_processes import ROOT, START_TIMEOUT_S, free_port

Labels = tuple[tuple[str, str], ...]


class GatewayProcess:
    def __init__(self, raw_config: dict[str, Any], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        config_path = log_path.with_suffix(".config.yaml")
        config_path.write_text(json.dumps(raw_config, indent=2))  # JSON is YAML
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "moa_local", "serve", "--config", str(config_path), "--port", str(self.port),
                   "--log-level", "info"]  # fmt: skip
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the gateway exited at start: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not serve within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def metrics(self) -> dict[tuple[str, Labels], float]:
        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(self.http.get("/metrics").text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback")

    def stop(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
        self.http.close()
