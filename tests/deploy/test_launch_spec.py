"""Building an engine server's command and environment (nothing is started here)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from moa_local.config import parse_config
from moa_local.deploy import launch_spec
from moa_local.deploy.engine_args import serve_flags
from moa_local.errors import ServingError
from moa_local.paths import cache_root

CPU_CONFIG = """
endpoints:
  small:
    base_url: http://127.0.0.1:8101/v1
    model: smollm2-135m-instruct
    context_window: 2048
    serve:
      engine: vllm-cpu
      model_path: {model}
      cpus: "0"
      kv_cache_gib: 1
"""


def test_cpu_launch_spec(tmp_path: Path) -> None:
    config = parse_config(CPU_CONFIG.format(model=tmp_path / "m"), "cpu.yaml")
    spec = launch_spec.launch_spec("small", config.endpoints["small"], tmp_path / "run", python="/venv/bin/python",
                                vllm="vllm")  # fmt: skip
    assert spec.command[:5] == ("/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
                                str(tmp_path / "m"))  # fmt: skip
    flags = list(spec.command[5:])
    assert flags[flags.index("--port") + 1] == "8101"
    assert flags[flags.index("--host") + 1] == "127.0.0.1"
    assert flags[flags.index("--served-model-name") + 1] == "smollm2-135m-instruct"
    assert "--enforce-eager" in flags
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert spec.env["HF_HUB_OFFLINE"] == "1" and spec.env["VLLM_NO_USAGE_STATS"] == "1"
    assert Path(spec.env["MPLCONFIGDIR"]).is_relative_to(tmp_path / "run" / "small")
    assert Path(spec.env["VLLM_CACHE_ROOT"]) == cache_root() / "vllm"
    assert spec.env["TMPDIR"] == str(launch_spec.private_tmp(tmp_path / "run", "small"))
    assert spec.health_url == "http://127.0.0.1:8101/health"
    assert spec.log == tmp_path / "run" / "small.log"


def test_private_tmp_stays_short_enough_for_unix_sockets(tmp_path: Path) -> None:
    assert launch_spec.private_tmp(Path("/srv/run"), "qwen") == Path("/srv/run/qwen/tmp")
    deep = tmp_path / ("very-long-folder-name-" * 4) / "run"
    far = launch_spec.private_tmp(deep, "qwen")
    assert len(str(far)) <= launch_spec.MAX_TMPDIR_LEN and not far.is_relative_to(deep)
    assert far == launch_spec.private_tmp(deep, "qwen") != launch_spec.private_tmp(deep, "smollm2")


def test_gpu_bare_metal_launch_spec(tmp_path: Path) -> None:
    config = parse_config(
        """
endpoints:
  big:
    base_url: http://127.0.0.1:8200/v1
    model: qwen2-72b-instruct
    context_window: 8192
    serve:
      engine: vllm
      model_path: /models/Qwen2-72B-Instruct-AWQ
      gpus: [2, 3]
      gpu_memory_utilization: 0.9
      quantization: awq
""",
        "gpu.yaml",
    )
    endpoint = config.endpoints["big"]
    spec = launch_spec.launch_spec("big", endpoint, tmp_path, python="unused", vllm="/opt/vllm/bin/vllm")
    assert spec.command[:3] == ("/opt/vllm/bin/vllm", "serve", "/models/Qwen2-72B-Instruct-AWQ")
    # The same flags the compose generator puts in the container's command.
    assert list(spec.command[3:]) == serve_flags("big", endpoint, host="127.0.0.1", port=8200)
    flags = list(spec.command)
    assert flags[flags.index("--tensor-parallel-size") + 1] == "2"
    assert flags[flags.index("--quantization") + 1] == "awq"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "VLLM_CPU_KVCACHE_SPACE" not in spec.env


def test_private_dir_is_created_with_mode_0700(tmp_path: Path) -> None:
    os.umask(old := os.umask(0))  # whatever the umask, the folder is private
    try:
        launch_spec.make_private_dir(tmp_path / "tmp")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o700


def loose_folder(path: Path) -> None:
    path.mkdir()
    path.chmod(0o755)


def symlink_to_a_folder(path: Path) -> None:
    path.symlink_to(path.parent)


def plain_file(path: Path) -> None:
    path.write_text("")


@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        (loose_folder, "its mode 0755 lets other users in (want 0700)"),
        (symlink_to_a_folder, "it is a symbolic link"),
        (plain_file, "it is not a folder"),
    ],
)
def test_private_dir_that_others_could_reach_is_refused(
    tmp_path: Path, plant: Callable[[Path], None], problem: str
) -> None:
    folder = tmp_path / "moa-local-0123456789abcdef"
    plant(folder)
    with pytest.raises(ServingError, match=re.escape(f"{folder}: refusing this engine temporary folder: {problem};")):
        launch_spec.make_private_dir(folder)


def test_private_dir_of_another_user_is_refused() -> None:
    info = os.stat_result((stat.S_IFDIR | 0o700, 0, 0, 2, 65534, 65534, 4096, 0, 0, 0))
    assert launch_spec.private_dir_problem(info, uid=1000) == "it belongs to uid 65534, not to this user (uid 1000)"
    assert launch_spec.private_dir_problem(info, uid=65534) is None
