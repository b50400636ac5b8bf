"""A worker that records events continuously until it is killed (for the SIGKILL test).

    python tests/apps/recording_worker.py RAW_DIR FLUSH_INTERVAL MAX_EVENTS

Event ``i`` carries the user agent ``n-i``. After ``record_request`` returns for event
``i`` the worker prints ``i <time.time()>``: that line is the acknowledgement the test
compares with what reached the RAW store.
"""

from __future__ import annotations

import sys
import time

from consent_middleware.recorder import Recorder, RecordingOptions
from consent_middleware.state import ConsentState


def main() -> None:
    raw_dir, interval, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    recorder = Recorder.to_raw_dir(raw_dir, options=RecordingOptions(flush_interval=interval))
    recorder.start()
    consent = ConsentState({"necessary": True}, "v1", needs_prompt=False, gpc=False)
    for i in range(limit):
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/page",
            "headers": [(b"user-agent", f"n-{i}".encode()), (b"host", b"h")],
            "client": ("192.0.2.5", 1000),
        }
        recorder.record_request(scope, status=200, duration_ms=0.1, consent=consent)
        print(i, time.time(), flush=True)
        time.sleep(0.0005)
    recorder.close()


if __name__ == "__main__":
    main()
