"""The console script as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "micdm.cli", *args], capture_output=True, text=True, check=False)


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("setup", "init", "synth", "extract", "series", "link", "occurrence", "features", "run", "demo"):
        assert command in result.stdout


def test_wrong_setting_gives_one_line_and_exit_2() -> None:
    result = run("init", "extract.block_sise=10")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "micdm: extract.block_sise: unknown setting; known keys here: ['block_size', 'files_per_partition', "
        "'full_refresh', 'header_json_max_bytes', 'max_retries', 'threads_per_task']"]
