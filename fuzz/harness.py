"""The command line every fuzz harness here shares: atheris (libFuzzer) when it is installed,
``--random N`` (a plain seeded mutator, no coverage guidance) everywhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run(
    *,
    script: str,
    atheris: Any,
    test_one_input: Callable[[bytes], None],
    random_inputs: Callable[[int], None],
    seed_corpus: Callable[[Path], None],
    corpus: Path,
) -> None:
    """Fuzz ``test_one_input`` with the flags in ``sys.argv``; the corpus is seeded on first use."""
    if len(sys.argv) >= 3 and sys.argv[1] == "--random":
        started = time.perf_counter()
        random_inputs(int(sys.argv[2]))
        print(f"in {time.perf_counter() - started:.1f} s")
        return
    if atheris is None:
        sys.exit(
            "atheris is not installed: `.venv/bin/pip install atheris` (Linux, CPython "
            f"3.8-3.11 wheels), or run `python fuzz/{script} --random 1000`"
        )
    if not any(not a.startswith("-") for a in sys.argv[1:]):  # no corpus folder named
        seed_corpus(corpus)
        sys.argv.append(str(corpus))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
