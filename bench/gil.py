"""How much of a call runs without the GIL, measured: can a second Python thread run beside it?

The switch interval is raised to 10 s, so the interpreter never takes the GIL
from the thread doing ``work``; a probe thread (a few microseconds of Python,
then ``sleep(0)``, as a reader thread between pages) then progresses only
while ``work`` has released the GIL.  The share is the probe's progress
beside ``work`` over its progress alone in the same time.  On a machine
whose cores are busy with other work the probe also waits for a core, so
the share is a lower bound; beside pure-Python work it is 0.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable


def _probe(stop: threading.Event, counts: list[int]) -> None:
    n = 0
    while not stop.is_set():
        for _ in range(200):  # holds the GIL for a few microseconds
            pass
        n += 1
        time.sleep(0)  # and lets it go
    counts.append(n)


def _run(work: Callable[[], Any] | None, seconds: float) -> int:
    stop, counts = threading.Event(), []
    probe = threading.Thread(target=_probe, args=(stop, counts), daemon=True)
    end = time.perf_counter() + seconds
    probe.start()
    while time.perf_counter() < end:
        if work is None:
            time.sleep(0.01)
        else:
            work()
    stop.set()
    probe.join(60)
    return counts[0]


def gil_free_share(work: Callable[[], Any], seconds: float = 3.0) -> dict[str, Any]:
    """The probe's progress beside ``work`` / alone, and beside pure Python (the control, about 0)."""
    def python() -> None:
        total = 0
        for i in range(200_000):
            total += i

    saved = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        alone = _run(None, seconds)
        beside = _run(work, seconds)
        control = _run(python, seconds)
    finally:
        sys.setswitchinterval(saved)
    return {"probe_alone": alone, "probe_beside_work": beside, "probe_beside_pure_python": control,
            "gil_free_share": round(beside / alone, 2) if alone else None,
            "control_share": round(control / alone, 2) if alone else None}
