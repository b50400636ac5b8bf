"""The atheris harnesses of ``make fuzz`` still run: their plain-mutator mode (``--random N``)
drives the same checks without atheris, so a broken harness shows up here, not months later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


@pytest.mark.parametrize(
    ("script", "inputs"), [("fuzz_cookie.py", 2000), ("fuzz_log_parser.py", 30)]
)
def test_harness_runs_its_random_mode_cleanly(script: str, inputs: int) -> None:
    done = subprocess.run(
        [sys.executable, str(FUZZ / script), "--random", str(inputs)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no failure" in done.stdout
