"""What every command shares: output that stays quiet off a terminal, and user errors without tracebacks.

Exit codes: 0 ok; 2 a user mistake (bad config or override, bad workload, not a run directory, usage);
1 the run itself failed (a kernel BUG found by the model, a deadlock) or an internal error; 130 interrupted.
Set SMPSIM_DEBUG=1 to get the Python traceback of an internal error instead of the one-line message.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, NoReturn, TypeVar

import typer

from smpsim.config import ConfigError
from smpsim.extras import missing_message
from smpsim.trace.errors import TraceError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


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


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


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
    if isinstance(exc, ImportError) and exc.name and missing_message(exc.name):
        return EXIT_USAGE, missing_message(exc.name)
    workload_error = _loaded_class("smpsim.model.workloads", "WorkloadError")
    if workload_error and isinstance(exc, workload_error):
        return EXIT_USAGE, f"invalid workload: {exc}"
    deadlock = _loaded_class("smpsim.model.errors", "DeadlockError")
    if deadlock and isinstance(exc, deadlock):
        return EXIT_RUN_FAILED, f"the simulation stopped: {exc}"
    model_error = _loaded_class("smpsim.model.errors", "ModelError")
    if model_error and isinstance(exc, model_error):
        return EXIT_RUN_FAILED, f"kernel BUG in the simulated model: {exc}"
    aborted = _loaded_class("smpsim.engines.distributed.coordinator_node", "RunAborted")
    if aborted and isinstance(exc, aborted):
        return EXIT_RUN_FAILED, f"the distributed run stopped: {exc}"
    return None


def handle_errors(fn: F) -> F:
    """Turn the exceptions of a command into ``error: ...`` on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
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
