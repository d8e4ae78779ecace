"""How a run ends: its status, the process's exit code, and stopping on SIGINT / SIGTERM without losing data.

The first SIGINT or SIGTERM only sets a flag. The engines look at it (``check()``) at their next consistent
point (a round of the inline engine, a turn of the coordinator's loop), stop the CPUs and write the trace up
to the last watermark, summary.json with status "interrupted" and provenance.json, then the command exits
with 128 + the signal (130, 143). A second signal exits at once, after the registered emergency clean-ups
(removing socket directories).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Exit codes (README, "Exit codes"); 128 + N for a run stopped by signal N.
EXIT_OK = 0
EXIT_RUN_FAILED = 1   # the run failed: a kernel BUG or deadlock in the model, a lost CPU, an internal error
EXIT_USAGE = 2        # a user mistake: config, arguments, a run directory
EXIT_CPU_LOST = 3     # `smpsim cpu`: refused by, never reached, or lost its coordinator

# Operations per Cpu.run call, in both engines: how long a run can go without looking at signals (and, in a
# CPU process, heartbeats) when the CPUs may run far ahead (policies without IPIs run freely).
RUN_CHUNK = 20_000

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A sweep asks its workers to stop for the user's SIGTERM or SIGINT: like the first such signal (the point
# records the user's signal), never "at once".
SOFT_STOPS = {signal.SIGUSR1: signal.SIGTERM, signal.SIGUSR2: signal.SIGINT}


def soft_stop_for(user_signal: int) -> int:
    """The signal a sweep sends its workers when the user sent ``user_signal``."""
    return next((s for s, u in SOFT_STOPS.items() if u == user_signal), signal.SIGUSR1)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; what it recorded up to then is written."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunAborted(Exception):
    """The distributed run cannot go on (a CPU died, broke the protocol, never joined); the message says which.
    kind names the fault for the logs and summary.json, cpu the CPU at fault (None: no single one)."""

    def __init__(self, message: str, cpu: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.cpu = cpu
        self.kind = kind or ("cpu lost" if cpu is not None else "run aborted")


def status_of(error: BaseException | None) -> str:
    """summary.json's status for a run that ended with ``error``: ok, error (the model stopped it: a kernel
    BUG or a deadlock, deterministic), aborted (the run lost a CPU process) or interrupted (a signal)."""
    if error is None:
        return "ok"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, RunAborted):
        return "aborted"
    return "error"


def exit_code_of(error: BaseException) -> int:
    return error.exit_code if isinstance(error, Interrupted) else 130 if isinstance(error, KeyboardInterrupt) \
        else EXIT_RUN_FAILED


_received: int | None = None
_raised = False  # check() has acted on _received: the run it stopped is over once the handling ends
_depth = 0
_cleanups: list[Callable[[], None]] = []


def received() -> int | None:
    """The signal that asked this process to stop, if any."""
    return _received


def check() -> None:
    """Raise Interrupted if a stop signal has arrived (called by the engines at consistent points)."""
    global _raised
    if _received is not None:
        _raised = True
        raise Interrupted(_received)


def _on_signal(signum: int, frame) -> None:
    global _received
    if signum in SOFT_STOPS:
        if _received is None:
            _received = SOFT_STOPS[signum]
        return
    if _received is None:
        _received = signum
        return
    for fn in list(_cleanups):  # second signal: out at once, leaving no sockets behind
        try:
            fn()
        except Exception:  # noqa: BLE001 - nothing may keep us from exiting now
            pass
    os._exit(128 + signum)


@contextmanager
def handling_signals() -> Iterator[None]:
    """Within: SIGINT and SIGTERM stop the run gracefully (see the module's doc); nestable. Outside the main
    thread it does nothing (only the main thread can take signals). A signal that stopped a run is forgotten
    at the end, so the same process can run again; one that came too late to stop anything is kept."""
    global _depth, _received, _raised
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = None
    if _depth == 0:
        previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if previous is not None:
            for s, h in previous.items():
                signal.signal(s, h)
            if _raised:
                _received, _raised = None, False


def accept_soft_stop() -> None:
    """A sweep worker: a soft stop from the sweep process stops the point it runs (and any later one)."""
    for s in SOFT_STOPS:
        signal.signal(s, _on_signal)


def at_second_signal(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Run ``cleanup`` (fast, never blocking) before exiting at once on a second signal; returns the function
    that unregisters it."""
    _cleanups.append(cleanup)
    return lambda: _cleanups.remove(cleanup)


@contextmanager
def raising_on_signals() -> Iterator[None]:
    """Within: SIGTERM raises Interrupted as SIGINT raises KeyboardInterrupt (a process with nothing to save:
    a CPU process of `smpsim cpu`)."""
    def raise_(signum, frame):
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, raise_) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_stop_signals() -> None:
    """A CPU process of `smpsim launch`: its coordinator stops it (END), or it dies with its parent."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
