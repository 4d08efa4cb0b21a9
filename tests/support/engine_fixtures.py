"""Pytest plugin: the real CPU vLLM engines of `configs/cpu.yaml`, once per session.

    @pytest.mark.engine
    def test_x(cpu_stack):
        config = cpu_stack.config                 # cpu.yaml with free ports
        path = cpu_stack.config_path              # ... also written to a file, for the CLI
        url = cpu_stack.base_url("qwen")          # http://127.0.0.1:<port>/v1
        cpu_stack.stop_endpoint("smollm2")        # a server dies mid-suite
        cpu_stack.start_endpoint("smollm2")       # and comes back (~30-60 s)

The servers are started by the launcher (the code `moa-local up` runs) with a
run folder in a temporary directory, and stopped at the end of the session,
also when the session fails or is interrupted (an atexit hook backs up the
fixture's teardown). Needs `make engine models` first; otherwise the fixture
fails with the launcher's message naming the missing piece.

`eventually(check)` is for what engines, the gateway's prober and Prometheus
report a moment after the request that caused it: it reruns the check's
assertions until they hold, and raises the last failure after a bound.
"""

from __future__ import annotations

import atexit
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from moa_local.config import Config, load_config
from moa_local.deploy import launcher

CPU_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu.yaml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def eventually(check: Callable[[], None], timeout_s: float = 60.0, interval_s: float = 0.5) -> None:
    """Run `check` until it raises no AssertionError; after `timeout_s`, its last one propagates."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval_s)


def with_free_ports(config: Config) -> Config:
    """A copy of the config whose endpoints (and gateway) listen on free loopback ports."""
    endpoints = {}
    for name, endpoint in config.endpoints.items():
        parts = urlsplit(endpoint.base_url)
        url = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{free_port()}"))
        endpoints[name] = endpoint.model_copy(update={"base_url": url})
    gateway = config.gateway.model_copy(update={"port": free_port()})
    return config.model_copy(update={"endpoints": endpoints, "gateway": gateway})


class CpuStack:
    """The running engines: the config they serve, and control over each one."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.config_path = run_dir / "cpu.yaml"  # the same config as a file, for CLI commands
        self.config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    def base_url(self, name: str) -> str:
        return self.config.endpoints[name].base_url

    def start(self) -> None:
        launcher.up(self.config, self.run_dir, on_event=_report)

    def start_endpoint(self, name: str) -> None:
        launcher.up(self.config, self.run_dir, names=[name], on_event=_report)

    def stop_endpoint(self, name: str) -> None:
        launcher.down(self.config, self.run_dir, names=[name], on_event=_report)

    def stop(self) -> None:
        launcher.down(self.config, self.run_dir, on_event=_report)


def _report(message: str) -> None:
    print(f"[cpu_stack] {message}", flush=True)


@pytest.fixture(scope="session")
def cpu_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpuStack]:
    stack = CpuStack(with_free_ports(load_config(CPU_CONFIG)), tmp_path_factory.mktemp("engines"))
    atexit.register(stack.stop)  # if the session dies before teardown runs
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        atexit.unregister(stack.stop)
