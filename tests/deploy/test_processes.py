"""Which process is which endpoint's engine: by the marker in its environment, else by its command line."""

from __future__ import annotations

from moa_local.deploy.processes import MARKER_ENV, engine_name, marker_for

COMMANDS = {"small": ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--port", "8101"]}


def test_the_marker_names_run_folder_and_endpoint() -> None:
    ours = {MARKER_ENV: marker_for("/runs/a#b", "small", "0123"), "PATH": "/bin"}
    assert engine_name(ours, [], "/runs/a#b", COMMANDS) == "small"
    assert engine_name(ours, [], "/runs/a", COMMANDS) is None  # another run folder's engine
    assert engine_name({MARKER_ENV: marker_for("/runs/other", "small", "0")}, [], "/runs/a#b", COMMANDS) is None


def test_a_readable_environment_without_the_marker_is_never_ours_whatever_its_command() -> None:
    assert engine_name({"PATH": "/bin"}, COMMANDS["small"], "/runs/a", COMMANDS) is None


def test_without_the_environment_the_command_line_decides() -> None:
    assert engine_name(None, COMMANDS["small"], "/runs/a", COMMANDS) == "small"
    assert engine_name(None, ["/usr/bin/python3", *COMMANDS["small"]], "/runs/a", COMMANDS) == "small"  # via #!
    assert engine_name(None, [*COMMANDS["small"][:-1], "8102"], "/runs/a", COMMANDS) is None
    assert engine_name(None, [], "/runs/a", COMMANDS) is None
