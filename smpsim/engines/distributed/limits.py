"""Host limits a distributed run needs, checked before it starts: open files (a connection per CPU, and
under launch a process per CPU)."""

from __future__ import annotations

import resource

# Open files of the process that serves the CPUs, measured with /proc/PID/fd during `smpsim launch --cpus N`
# (N = 1, 8, 32, 64: 14, 36, 108, 204 at the peak): 3 per CPU process launch starts (its connection and the
# two ends of multiprocessing's sentinel pipe) over a base of about 12 (ZeroMQ's context, logs, the trace);
# the last CPU process forked inherits as many and needs about 20 of its own. `smpsim coordinator` holds
# only the connection per CPU.
FDS_BASE = 32
FDS_PER_CPU_PROCESS = 3
FDS_PER_CPU_CONNECTION = 1


class LimitError(Exception):
    """A host limit too low for the run; the message names the limit and how to raise it. Nothing ran."""


def ensure_open_files(cpus: int, what: str, per_cpu: int = FDS_PER_CPU_PROCESS) -> int:
    """Make sure this process (and what it forks) may open the files ``cpus`` CPUs need, ``per_cpu`` each:
    raise the soft limit to the hard one when that is enough, else LimitError naming both and the
    `ulimit -n` to use. Returns the number needed."""
    need = FDS_BASE + per_cpu * cpus
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return need
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard))
        return need
    raise LimitError(f"{what} with {cpus} CPUs needs about {need} open files, but this shell allows {soft} "
                     f"(`ulimit -n`; hard limit {hard}): raise both with `ulimit -n {need}` (the hard limit "
                     "as root, or in /etc/security/limits.conf) and run it again, or use fewer CPUs")
