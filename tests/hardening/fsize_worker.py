"""Run by test_recorder_faults in its own process: the kernel refuses file writes over 1 KiB
(RLIMIT_FSIZE, EFBIG) for a while, then allows them again. Needs no privileges.

    python tests/hardening/fsize_worker.py RAW_DIR   # prints the recorder's counters as JSON
"""

from __future__ import annotations

import dataclasses
import json
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from consent_support import SECRET, TestClient, make_app

from consent_middleware.recorder import Recorder, RecordingOptions

BEFORE, DURING = 5, 40


def wait_for(predicate: Callable[[], bool]) -> None:
    for _ in range(3000):  # bounded: about 30 s
        if predicate():
            return
        time.sleep(0.01)
    raise SystemExit("gave up waiting for the recorder")


def main(raw: Path) -> None:
    # Without this the kernel kills the process (SIGXFSZ) instead of failing the write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    options = RecordingOptions(flush_interval=0.05, error_log_interval=3600.0)
    recorder = Recorder.to_raw_dir(
        raw, options=options, ledger_keys=[SECRET], excluded_prefixes=("/consent",)
    )
    statuses: list[int] = []
    with TestClient(make_app(recorder=recorder)) as client:
        statuses += [client.get("/").status_code for _ in range(BEFORE)]
        wait_for(lambda: recorder.stats.flushed == BEFORE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # every segment is larger
        statuses += [client.get("/").status_code for _ in range(DURING)]
        wait_for(lambda: recorder.stats.write_errors >= 3)
        during = dataclasses.asdict(recorder.stats)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        wait_for(lambda: recorder.stats.flushed == BEFORE + DURING)
    after = dataclasses.asdict(recorder.stats)
    print(json.dumps({"statuses": statuses, "during": during, "after": after}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
