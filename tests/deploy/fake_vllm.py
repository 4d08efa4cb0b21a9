"""A stand-in for the CPU engine, for launcher tests that must not start vLLM.

`FakeVllm.install(tmp_path)` makes an engine environment whose `bin/python` is
a symlink to this interpreter and a `vllm.entrypoints.openai.api_server`
module on PYTHONPATH, so the launcher's real command line
(`<venv>/bin/python -m vllm.entrypoints.openai.api_server --model ... --port N`)
runs it unchanged and /proc shows that exact command. It serves `GET /health`
on the given host and port. Flags in the endpoint's `serve.args` shape it:
`--fake-never-ready` never listens (an engine still loading), and
`--fake-ignore-sigterm` ignores SIGTERM (only SIGKILL stops it). It prints
`fake engine: started` once its signal handling is set up, and `fake engine:
ignoring SIGTERM` each time it ignores one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moa_local.deploy import launch_spec, processes
from moa_local.deploy.run_state import EngineRecord, read_state

REPO = Path(__file__).resolve().parents[2]

API_SERVER = """\
import http.server, signal, sys, time

args = sys.argv[1:]
if "--fake-ignore-sigterm" in args:
    signal.signal(signal.SIGTERM, lambda *_: print("fake engine: ignoring SIGTERM", flush=True))
print("fake engine: started", flush=True)
if "--fake-never-ready" in args:
    while True:
        time.sleep(3600)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


server = http.server.HTTPServer((args[args.index("--host") + 1], int(args[args.index("--port") + 1])), Health)
server.serve_forever()
"""


@dataclass(frozen=True)
class FakeVllm:
    venv: Path
    pythonpath: str
    model: Path

    @classmethod
    def install(cls, root: Path) -> FakeVllm:
        venv = root / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / launch_spec.ENGINE_STAMP).write_text("{}")
        (venv / "bin" / "python").symlink_to(sys.executable)
        package = root / "site" / "vllm" / "entrypoints" / "openai"
        package.mkdir(parents=True)
        for folder in (package, package.parent, package.parent.parent):
            (folder / "__init__.py").write_text("")
        (package / "api_server.py").write_text(API_SERVER)
        model = root / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        pythonpath = os.pathsep.join([str(root / "site"), str(REPO), os.environ.get("PYTHONPATH", "")])
        return cls(venv, pythonpath.rstrip(os.pathsep), model)

    @property
    def env(self) -> dict[str, str]:
        """What a `moa-local` process needs to start this fake instead of vLLM."""
        return {"MOA_LOCAL_ENGINE_VENV": str(self.venv), "PYTHONPATH": self.pythonpath}

    def config_text(self, port: int, *args: str, name: str = "small") -> str:
        return f"""
endpoints:
  {name}:
    base_url: http://127.0.0.1:{port}/v1
    model: fake-model
    serve:
      engine: vllm-cpu
      model_path: {self.model}
      args: [{", ".join(args)}]
"""

    def cli(self, *argv: str) -> subprocess.Popen[str]:
        """`moa-local ARGV...` in its own process, with this fake as its engine."""
        return subprocess.Popen(
            [sys.executable, "-m", "moa_local", *argv],
            env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def wait_for_record(run_dir: Path, name: str, command: subprocess.Popen[str], timeout_s: float = 60) -> EngineRecord:
    """Poll the state file until `command` has recorded the engine `name` (fails if it exits first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = read_state(run_dir).get(name)
        if record is not None:
            return record
        if command.poll() is not None:
            raise AssertionError(f"exited {command.returncode} before recording {name}: {command.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no record of {name} in {run_dir} after {timeout_s} s")


def wait_for_line(log: str | Path, line: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if line in Path(log).read_text().splitlines():
                return
        time.sleep(0.05)
    raise AssertionError(f"{log}: no line {line!r} after {timeout_s} s")


def engines_of(run_dir: Path) -> list[processes.FoundEngine]:
    """Every engine process of this run folder still running, by its marker."""
    return processes.find_engines(str(run_dir.resolve()), {})


def kill_engines_of(run_dir: Path) -> None:
    """Test clean-up: SIGKILL whatever engines of this run folder are left."""
    for engine in engines_of(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.pid, signal.SIGKILL)
