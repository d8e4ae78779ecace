"""The inline engine's half of a round (engines/inline.py), compiled with the core: every CPU that may runs and
its batch goes to the core, then each batch the core answers goes to its CPU.

Apart from inline.py because the loop over the CPUs is hot and compiled (smpsim/native.py), while the
engine around it stays plain Python: tests subclass InlineEngine and swap its core, which a compiled class
does not allow. Interpreted, these two loops cost the inline engine about 6% more CPU time per kmap.
"""

from __future__ import annotations

from typing import Any

from smpsim.engines.core import CpuPort, Down


def work_ports(core: Any, ports: list[CpuPort], report: list[bool], active: set[int], max_ops: int) -> None:
    """Every CPU in `active` runs as far as it may, in id order, and its batch goes to the core at once; a
    CPU that cannot run leaves `active` until a batch is delivered to it (deliver_ports). core: a Core,
    or anything with its receive()."""
    for c in sorted(active) if len(active) > 1 else list(active):
        port = ports[c]
        up = port.work(max_ops, report[c])
        report[c] = False
        if not port.runnable():
            active.discard(c)
        if up is not None:
            core.receive(c, up)


def deliver_ports(downs: list[tuple[int, Down]], ports: list[CpuPort], report: list[bool],
                  active: set[int]) -> None:
    """Each batch to its CPU's port at once; the CPU may have something to say now."""
    for c, down in downs:
        report[c] = ports[c].deliver(down)
        active.add(c)
