"""Stop signals that arrive inside the stop handler itself (a real second signal at each of its lines).

Ctrl-C reaches a gunicorn worker twice: SIGINT from the terminal and SIGQUIT
from the master.  When the second one landed while the first handler was
inside ``threading.Event.set`` (a non-reentrant lock), the nested handler
waited for that lock forever; the worker's main thread never left its loop
and the master SIGKILLed it after the graceful timeout
(``tests/test_shutdown.py`` saw it once in 20 stops).  Here a trace function
sends the process a real second signal at every line the first handler runs,
so the nested handler lands at each point, including inside any lock.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import os, signal, sys
from utils.ml.jobs import interrupt

budget = [200]

def tracer(frame, event, arg):
    # Every line executed inside the first handler (and what it calls) gets a second stop signal.
    if event == "line" and budget[0] > 0:
        budget[0] -= 1
        os.kill(os.getpid(), SECOND)
    return tracer

def deliver(first):
    sys.settrace(tracer)
    os.kill(os.getpid(), first)
    sys.settrace(None)
"""

WORKER = """
SECOND = signal.SIGQUIT

class Worker:
    alive = True

worker = Worker()
interrupt.guard_worker_signals(worker)
deliver(signal.SIGINT)
print(interrupt.stop_requested(), worker.alive, budget[0] < 200)
"""

SCHEDULER_PROCESS = """
SECOND = signal.SIGINT
seen = []
previous = interrupt.on_stop_signals((signal.SIGTERM, signal.SIGINT), lambda: seen.append(1))
deliver(signal.SIGTERM)
print(interrupt.stop_requested(), len(seen) > 1, budget[0] < 200)
"""


def run(body: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        # A hang is the failure: the child cannot be stopped by its own (deadlocked) handlers,
        # so subprocess.run's timeout kills it with SIGKILL.
        done = subprocess.run([sys.executable, "-c", PRELUDE + body], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the stop handler deadlocked when a second stop signal arrived inside it")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_gunicorn_worker_stops_when_a_second_signal_lands_inside_its_stop_handler():
    # Jobs are told to stop and the worker's loop ends; nested handlers ran (the trace fired).
    assert run(WORKER) == "True False True"


def test_the_scheduler_process_handler_is_reentrant_too():
    # flask ml scheduler's handlers (SIGTERM, SIGINT): the flag is set and the nested calls returned.
    assert run(SCHEDULER_PROCESS) == "True True True"
