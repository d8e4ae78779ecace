"""What every command shares: output that stays quiet off a terminal, and user errors without tracebacks.

Exit codes (defined in smpsim.engines.stopping, tabled in the README): 0 ok; 2 a user mistake (bad config
or override, bad workload, not a run directory, usage); 1 the run itself failed (a kernel BUG found by the
model, a deadlock, a lost CPU process) or an internal error; 3 `smpsim cpu` lost or never reached its
coordinator; 130 / 143 stopped by SIGINT / SIGTERM (what ran is kept).
Set SMPSIM_DEBUG=1 to get the Python traceback of an internal error instead of the one-line message.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, NoReturn, TypeVar

import typer

from smpsim.config import ConfigError
from smpsim.engines.stopping import EXIT_RUN_FAILED, EXIT_USAGE, RunAborted, exit_code_of
from smpsim.extras import missing_message
from smpsim.trace.errors import TraceError, TraceWriteError

F = TypeVar("F", bound=Callable[..., Any])


def is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def console():
    """A rich Console for stdout, or None when stdout is not a terminal (then print plain text)."""
    if not is_tty():
        return None
    from rich.console import Console

    return Console()


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def interrupted(e: KeyboardInterrupt, run_dir: Any) -> NoReturn:
    """A run stopped by a signal: say how far it got and where that is kept, exit 128 + the signal."""
    from smpsim.trace.rundir import read_summary

    if run_dir is None:
        fail(stop_reason(e), exit_code_of(e))
    try:
        summary = read_summary(run_dir) or {}
    except TraceError:
        summary = {}
    reached = summary.get("t_reached")
    where = f" at virtual time t={reached:,}" if isinstance(reached, int) else ""
    fail(f"{stop_reason(e)}{where}; the run up to there is in {run_dir} (status \"interrupted\"; "
         "smpsim analyze reads it)", exit_code_of(e))


def stop_reason(e: KeyboardInterrupt) -> str:
    """What stopped a command: "interrupted by SIGTERM", or for Python's own KeyboardInterrupt (no text)
    "interrupted by SIGINT"."""
    return str(e) or "interrupted by SIGINT"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def say(message: str) -> None:
    """A line on stderr about what a command is doing (waiting for a directory another process uses)."""
    print(message, file=sys.stderr, flush=True)


def _loaded_class(module: str, name: str) -> type | None:
    """An exception class of a module if it is loaded (if it is not, nothing raised one): classifying an
    error imports nothing."""
    return getattr(sys.modules.get(module), name, None)


def classify(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for a known user mistake or run failure, None for anything else."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, TraceError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, TraceWriteError):  # the run started: it failed, no user mistake
        return EXIT_RUN_FAILED, str(exc)
    if isinstance(exc, ImportError) and exc.name and missing_message(exc.name):
        return EXIT_USAGE, missing_message(exc.name)
    workload_error = _loaded_class("smpsim.model.workloads", "WorkloadError")
    if workload_error and isinstance(exc, workload_error):
        return EXIT_USAGE, f"invalid workload: {exc}"
    deadlock = _loaded_class("smpsim.model.errors", "DeadlockError")
    if deadlock and isinstance(exc, deadlock):
        return EXIT_RUN_FAILED, f"the simulation stopped: {exc}"
    policy_error = _loaded_class("smpsim.model.errors", "PolicyError")
    if policy_error and isinstance(exc, policy_error):  # the user's policy, not the kernel or the engine
        return EXIT_RUN_FAILED, f"the policy stopped the run: {exc}"
    model_error = _loaded_class("smpsim.model.errors", "ModelError")
    if model_error and isinstance(exc, model_error):
        if getattr(exc, "op", None) in (_loaded_class("smpsim.model.errors", "WORKLOAD_OPS") or ()):
            return EXIT_RUN_FAILED, f"the workload stopped the run: {exc}"
        return EXIT_RUN_FAILED, f"kernel BUG in the simulated model: {exc}"
    if isinstance(exc, RunAborted):
        return EXIT_RUN_FAILED, f"the distributed run stopped: {exc}"
    limit_error = _loaded_class("smpsim.engines.distributed.limits", "LimitError")
    if limit_error and isinstance(exc, limit_error):
        return EXIT_USAGE, str(exc)
    return None


def handle_errors(fn: F) -> F:
    """Turn the exceptions of a command into ``error: ...`` on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt as e:
            sys.stdout.flush()
            print(f"error: {stop_reason(e)}", file=sys.stderr)
            raise typer.Exit(exit_code_of(e)) from None
        except BrokenPipeError:
            # The reader of our stdout went away (e.g. `smpsim export RUN | head`): not an error.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            raise typer.Exit(0) from None
        except Exception as e:  # noqa: BLE001 - the whole point: no traceback for the user
            known = classify(e)
            if known is not None:
                fail(_one_paragraph(known[1]), known[0])
            if os.environ.get("SMPSIM_DEBUG"):
                raise
            if isinstance(e, OSError):
                fail(_one_paragraph(str(e)), EXIT_RUN_FAILED)
            fail(f"internal error: {type(e).__name__}: {_one_paragraph(str(e))} "
                 "(set SMPSIM_DEBUG=1 for the traceback)", EXIT_RUN_FAILED)

    return wrapper  # type: ignore[return-value]


def _one_paragraph(text: str) -> str:
    """No blank lines, so the message stays one paragraph."""
    return "\n".join(line for line in text.strip().splitlines() if line.strip())
