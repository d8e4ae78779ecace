"""Errors the model raises: what the kernel would BUG() on, a ring deadlock, a workload that cannot be read."""

from __future__ import annotations


class ModelError(Exception):
    """The kernel would BUG() here (or the workload asked for something impossible).

    Names the CPU, the operation and its position in that CPU's program so the user can find it.
    """

    def __init__(self, cpu: int | None, op: str, position: int | None, what: str, t: int | None = None):
        self.cpu, self.op, self.position, self.what, self.t = cpu, op, position, what, t
        where = []
        if cpu is not None:
            where.append(f"CPU {cpu}")
        if position is not None:
            where.append(f"operation #{position} ({op})")
        elif op:
            where.append(op)
        if t is not None:
            where.append(f"at t={t}")
        super().__init__(f"{', '.join(where)}: {what}")


class WorkloadError(Exception):
    """A user mistake in a workload or script; the message names the file, the line and the problem.
    (Here, not in workloads.py, so that the readers workloads.py streams from can raise it.)"""


# ModelError.op of an error in the workload itself (a generator's exception or bad op, a CPU's copy of
# the workload's file), not in the simulated kernel.
WORKLOAD_OPS = ("generator", "workload")


class DeadlockError(ModelError):
    """Every CPU that still has work sleeps on pkmap_map_wait: nobody can ever kunmap again."""

    def __init__(self, t: int, sleepers: list[int], ring_state: str):
        self.sleepers = sleepers
        self.ring_state = ring_state
        super().__init__(None, "kmap_high", None,
                         f"deadlock: CPUs {sleepers} all sleep on pkmap_map_wait and no CPU can kunmap; "
                         f"{ring_state}", t)


class PolicyError(ModelError):
    """A policy broke its contract (docs/policies.md) or raised in a hook: names the policy, the hook and
    where in the policy's source (file, line). Not an engine bug, and not the workload's fault."""

    def __init__(self, cpu: int | None, hook: str, what: str, policy: str = "", file: str | None = None,
                 line: int | None = None, t: int | None = None):
        self.policy, self.hook, self.file, self.line = policy, hook, file, line
        super().__init__(cpu, hook, None, what, t)
