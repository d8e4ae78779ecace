"""The progress line of a run, the same for both engines: kmaps done of the total, an ETA, and the virtual
time, flushes and IPIs so far. Only on a terminal (``con`` is None off one: nothing is drawn)."""

from __future__ import annotations

from typing import Any

from smpsim.headline import fmt


class RunProgress:
    """A context manager; call it with the engine's running counters (a dict with ``kmaps``, ``t``,
    ``flushes``, ``ipis``) as often as the engine likes."""

    def __init__(self, con: Any, total: int | None, what: str = "simulating") -> None:
        self.con, self.total, self.what = con, total, what
        self.progress = None

    def __enter__(self) -> "RunProgress":
        if self.con is not None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn(f"{self.what}: kmaps"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.fields[status]}", style="dim"),
                                     console=self.con, transient=True)
            self.task = self.progress.add_task("run", total=self.total, status="")
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, state: dict[str, Any]) -> None:
        if self.progress is None:
            return
        status = (f"t={fmt(state.get('t', 0))}  flushes {fmt(state.get('flushes', 0))}  "
                  f"IPIs {fmt(state.get('ipis', 0))}")
        self.progress.update(self.task, completed=state.get("kmaps", 0), status=status)


def total_kmaps(cfg: Any) -> int | None:
    """The kmaps a run will do: CPUs x kmaps per CPU (unknown for a workload read from a file)."""
    from smpsim.config import WORKLOAD_FILE_KEYS

    if cfg.workload.kind in WORKLOAD_FILE_KEYS:
        return None
    return cfg.machine.cpus * cfg.workload.kmaps_per_cpu
