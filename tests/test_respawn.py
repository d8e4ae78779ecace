"""A lost CPU process is replaced (issue 11 item 7): checkpoints of a CPU's state, and launch restarting a
CPU process that died, which catches up from its last checkpoint and the messages sent to it since.

The first test checks the snapshot itself in one process: CPUs swapped for copies restored from their
msgpack'ed snapshots, again and again, must not change a run. The others kill real CPU processes of real
`smpsim launch` runs with SIGKILL and compare with an undisturbed run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import psutil
import pytest

from pinned_cases import config_for, observe
from smpsim.engines import inline
from smpsim.engines.core import CpuPort
from smpsim.model import workloads
from smpsim.model.cpu import Cpu

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_counters.json").read_text())


class RestoringEngine(inline.InlineEngine):
    """Every few rounds each CPU is replaced by a new one restored from its snapshot sent through msgpack,
    as a replacement process gets it."""

    def __init__(self, cfg, recorder, every: int = 2):
        super().__init__(cfg, recorder)
        self.cfg, self.every, self.rounds, self.restored = cfg, every, 0, 0

    def step(self):
        self.rounds += 1
        if self.rounds % self.every == 1:
            for c, port in enumerate(self.ports):
                state = msgpack.unpackb(msgpack.packb(port.snapshot()), raw=False, strict_map_key=False)
                cpu = Cpu(self.cfg, c, workloads.program(self.cfg, c))
                new = CpuPort(cpu)
                new.restore(state)
                self.cpus[c], self.ports[c] = cpu, new
                self.restored += 1
        return super().step()


@pytest.mark.parametrize("name", sorted(PINNED)[::3])
def test_restored_cpus_run_on_unchanged(name, tmp_path):
    from smpsim.engines.recorder import Recorder
    cfg = config_for(PINNED[name], tmp_path)
    want = inline.run(cfg).summary
    engine = RestoringEngine(cfg, Recorder(cfg, None, "inline"))
    engine.drive()
    got = engine.core.close()
    assert engine.restored > 0
    assert got["digest"] == want["digest"]
    assert observe(got) == observe(want)
