"""Replacing a lost CPU process: checkpoints, the coordinator's record since, and the replacement's catch-up.

Every ``checkpoint_ops`` operations (or model messages received; the coordinator's WELCOME says how many) a
CPU sends its state
(CpuPort.snapshot: plain data, never pickled) right after a batch, as a CKPT message. The link is ordered,
so the coordinator knows exactly what it had received from the CPU when the CPU took it; the state says how
many model messages the CPU had received. The coordinator keeps the latest checkpoint per CPU and the batches
it has sent to that CPU since (dropped at the next checkpoint: memory stays bounded).

When launch sees a CPU process die, it starts a new one for the same CPU id; under `smpsim coordinator`
the CPU's own restart (a pod's) joins again. Only a CPU id whose process is known lost (dead, disconnected
or silent) may join again. The new process restores the checkpoint (or starts afresh if there is none
yet), gets the batches sent since, and applies them one at a time, each once it has run as far as it could:
a delivery the transport could have made, so it runs on exactly as the lost process did. What it sends
again that the coordinator already has is dropped once, by counting model messages and trace events
(batch boundaries depend on timing, these counts do not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from collections.abc import Callable, Iterator

from smpsim.engines.distributed import protocol as p
from smpsim.engines.stopping import RunAborted
from smpsim.model import messages as mm

CHECKPOINT_OPS = 100_000  # default: operations (and model messages received) between a CPU's checkpoints
MAX_RESPAWNS = 3          # default: restarts per CPU before the run is given up
CLAIM_WAIT_S = 2 * p.PEER_TIMEOUT_S  # a HELLO for a running CPU waits this long for its predecessor to be lost


@dataclass(frozen=True)
class RespawnPolicy:
    """How `smpsim launch` replaces lost CPU processes; max_per_cpu 0: not at all (--no-respawn)."""
    max_per_cpu: int = MAX_RESPAWNS
    checkpoint_ops: int = CHECKPOINT_OPS

    @property
    def enabled(self) -> bool:
        return self.max_per_cpu > 0


NO_RESPAWN = RespawnPolicy(max_per_cpu=0, checkpoint_ops=0)


class Received:
    """What the coordinator has taken from one CPU: requests, Done, trace events (Progress is not counted:
    how many a CPU sends depends on timing)."""
    __slots__ = ("requests", "done", "events")

    def __init__(self, requests: int = 0, done: int = 0, events: int = 0):
        self.requests, self.done, self.events = requests, done, events

    def add(self, msgs: list, events: list) -> None:
        for x in msgs:
            t = type(x)
            if t is mm.Request:
                self.requests += 1
            elif t is mm.Done:
                self.done += 1
        self.events += len(events)

    def copy(self) -> "Received":
        return Received(self.requests, self.done, self.events)


class CheckpointStore:
    """Per CPU: the latest checkpoint, what had been received from the CPU when it was taken, and the
    batches sent to the CPU since, as [first message number, wire messages, safe]."""

    def __init__(self, ncpu: int):
        self.state: list[dict | None] = [None] * ncpu
        self.at: list[Received] = [Received() for _ in range(ncpu)]
        self.received: list[Received] = [Received() for _ in range(ncpu)]
        self.sent = [0] * ncpu                       # model messages sent to each CPU
        self.log: list[list] = [[] for _ in range(ncpu)]
        self.count = [0] * ncpu                      # checkpoints taken per CPU

    def sent_batch(self, cpu: int, wire_msgs: list, safe: int) -> None:
        log = self.log[cpu]
        if not wire_msgs and log:  # only a larger safe time: it rides on the last batch (the CPU could have
            log[-1][2] = max(log[-1][2], safe)  # got both before running), so the log grows with messages only
            return
        log.append([self.sent[cpu], wire_msgs, safe])
        self.sent[cpu] += len(wire_msgs)

    def checkpoint(self, cpu: int, delivered: int, state: dict) -> None:
        """A checkpoint from CPU cpu that includes the first `delivered` messages sent to it; ValueError if
        that is not a number of messages sent since the last one."""
        log = self.log[cpu]
        first = log[0][0] if log else self.sent[cpu]
        if not first <= delivered <= self.sent[cpu]:
            raise ValueError(f"a checkpoint after {delivered} messages received, but {self.sent[cpu]} were "
                             f"sent and the last checkpoint was after {first}")
        keep = []
        included_safe = None  # the safe time of the batches the checkpoint includes: it may not have had it
        for entry in log:
            start, msgs, safe = entry
            if start + len(msgs) <= delivered:
                included_safe = safe
                continue
            if start < delivered:  # part of a batch (a transport that merges batches would split them so)
                entry = [delivered, msgs[delivered - start:], safe]
            keep.append(entry)
        if included_safe is not None:  # again first, alone: a safe time the CPU has already does nothing
            keep.insert(0, [delivered, [], included_safe])
        self.log[cpu] = keep
        self.state[cpu] = state
        self.at[cpu] = self.received[cpu].copy()
        self.count[cpu] += 1

    def resume(self, cpu: int) -> tuple[dict | None, list, "CatchUp"]:
        """What a replacement of CPU cpu gets (the checkpoint, the batches since), and the catch-up that
        drops what it sends again."""
        got, at = self.received[cpu], self.at[cpu]
        skip = Received(got.requests - at.requests, got.done - at.done, got.events - at.events)
        return self.state[cpu], [[msgs, safe] for _, msgs, safe in self.log[cpu]], CatchUp(skip)


class CatchUp:
    """A replacement's batches, until it has sent again everything the lost process had sent: what the
    coordinator already has is dropped, once."""
    __slots__ = ("skip",)

    def __init__(self, skip: Received):
        self.skip = skip

    def filter(self, msgs: list, events: list, lb: int) -> tuple[list, list]:
        """The new messages and events of a batch. A Progress is new only once every request has come
        again and its bound is beyond what the coordinator knows (lb): an older one says less."""
        skip = self.skip
        keep = []
        for x in msgs:
            t = type(x)
            if t is mm.Request:
                if skip.requests:
                    skip.requests -= 1
                    continue
            elif t is mm.Done:
                if skip.done:
                    skip.done -= 1
                    continue
            elif skip.requests or skip.done or x.bound <= lb:
                continue
            keep.append(x)
        if skip.events:
            n = min(skip.events, len(events))
            skip.events -= n
            events = events[n:]
        return keep, events

    def pending(self) -> bool:
        s = self.skip
        return bool(s.requests or s.done or s.events)


class Respawner:
    """The coordinator's side of replacing lost CPU processes. It owns the policy, the checkpoints (store;
    None when nothing is replaced), how often each CPU was replaced, the replacements started and not yet
    joined (replacing), those catching up, and the HELLOs of a restarted CPU held until its predecessor is
    lost (claims). replace_cpu: launch's, which starts a new process for a CPU id; None (`smpsim
    coordinator`): the CPU's own restart (a pod's) joins again with the same id."""

    def __init__(self, ncpu: int, policy: RespawnPolicy, replace_cpu: Callable[[int], None] | None, log=None):
        self.policy = policy
        self.replace_cpu = replace_cpu
        self.log = log
        self.store = CheckpointStore(ncpu) if policy.enabled else None
        self.count = [0] * ncpu                     # replacements per CPU
        self.replacing: dict[int, float] = {}       # CPU -> when its replacement was started
        self.catching_up: dict[int, CatchUp] = {}
        self.claims: dict[int, tuple[bytes, dict, float]] = {}  # CPU -> a HELLO waiting for its predecessor's loss

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    @property
    def awaits_restarts(self) -> bool:
        """Lost CPUs come back by their own restart (a pod's), not a process this coordinator starts."""
        return self.enabled and self.replace_cpu is None

    # ---- a CPU lost, and its replacement ----------------------------------------------------------------
    def check_allowed(self, cpu: int, reason: str) -> None:
        """RunAborted (reason, and why no more) once CPU cpu has been replaced as often as allowed."""
        if self.count[cpu] >= self.policy.max_per_cpu:
            raise RunAborted(f"{reason}; it was replaced {self.count[cpu]} times already, the most "
                             f"allowed (--max-respawns {self.policy.max_per_cpu})", cpu)

    def begin(self, cpu: int, reason: str, killed: bool) -> str:
        """Count a replacement of CPU cpu; what the fault says about it (why, how, from where)."""
        self.count[cpu] += 1
        store = self.store
        where = (f"its checkpoint {store.count[cpu]}" if store.state[cpu] is not None
                 else "the start (no checkpoint yet)")
        how = ("replaced by a new process" if self.replace_cpu is not None
               else f"waiting for a new process to join as CPU {cpu}")
        killed_too = "; its process was killed" if killed and self.replace_cpu else ""
        return (f"{reason}{killed_too}; {how} ({self.count[cpu]} of at most {self.policy.max_per_cpu}), which "
                f"resumes from {where}")

    def start(self, cpu: int, now: float) -> None:
        """The replacement is on its way (launch starts it, and kills the old process if it is still there)."""
        self.catching_up.pop(cpu, None)
        self.replacing[cpu] = now
        if self.replace_cpu is not None:
            self.replace_cpu(cpu)

    def check_overdue(self, now: float, join_timeout: float) -> None:
        """RunAborted for a replacement that has not joined within join_timeout."""
        for c, since in self.replacing.items():
            if now - since > join_timeout:
                raise RunAborted(f"CPU {c}'s replacement process did not join within {join_timeout:g} s "
                                 "(--join-timeout)" + ("" if self.replace_cpu else
                                                       f": restart `smpsim cpu` for CPU {c}"), c)

    def resume(self, cpu: int) -> tuple[dict | None, list]:
        """CPU cpu's replacement has joined: the checkpoint and the batches since, which it catches up from."""
        state, downs, self.catching_up[cpu] = self.store.resume(cpu)
        return state, downs

    # ---- what travels while CPUs may be replaced ----------------------------------------------------------
    def checkpoint(self, cpu: int, delivered: int, state: dict) -> bool:
        """A CKPT from CPU cpu, kept unless nothing is replaced or the CPU is catching up (it has sent less
        than the checkpoint would say); whether it was kept."""
        if self.store is None or cpu in self.catching_up:
            return False
        self.store.checkpoint(cpu, delivered, state)
        return True

    def catch_up(self, cpu: int, msgs: list, events: list, horizon: int, seen: int, core) -> tuple:
        """A replacement's batch: what the lost process had sent already is dropped; until the replacement
        is back where that process was, the horizon and IPIs seen it reported stand."""
        catch = self.catching_up[cpu]
        before = core.ipis_sent[cpu] - len(core.ipi_unseen[cpu])
        msgs, events = catch.filter(msgs, events, core.coord.lb[cpu])
        if catch.pending() or seen < before:
            return msgs, events, core.horizon[cpu], before
        del self.catching_up[cpu]
        if self.log:
            self.log.info("caught up", cpu=cpu, t=horizon)
        return msgs, events, horizon, seen

    # ---- a restarted CPU's HELLO while its predecessor may still be there ---------------------------------
    def claim(self, cpu: int, ident: bytes, who: dict, now: float) -> tuple[bytes, dict, float] | None:
        """Hold a HELLO for running CPU cpu until its predecessor is lost; the claim it replaces, if any."""
        earlier = self.claims.get(cpu)
        self.claims[cpu] = (ident, who, now)
        return earlier

    def settled_claims(self, now: float) -> Iterator[tuple[bool, int, bytes, dict]]:
        """Claims settled, each dropped as it is yielded, as (admit, cpu, ident, who): admitted once the
        predecessor is lost, refused if it still answers after CLAIM_WAIT_S. Lazily: what handling one
        does (a loss found by a send) counts for the next."""
        for c, (ident, who, since) in list(self.claims.items()):
            if c in self.replacing or now - since > CLAIM_WAIT_S:
                del self.claims[c]
                yield c in self.replacing, c, ident, who


# ---- the replacement process ----------------------------------------------------------------------------
def spawn_cpu(address: str, cpu: int, run_id: str, token: str, log_dir: str | None) -> subprocess.Popen:
    """Start a replacement CPU process: a new interpreter (forking the coordinator, which has threads and
    a ZeroMQ context by now, is not safe). What it needs comes on its stdin, the token never on its
    command line. Its own process group: a Ctrl-C at the terminal is for launch, which stops the CPUs
    itself (the forked CPUs ignore it; this one could not yet while its interpreter starts)."""
    root = str(Path(__file__).resolve().parents[3])  # this smpsim, wherever the parent imported it from
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-c", "from smpsim.engines.distributed.respawn import "
                             "child_main; child_main()"], stdin=subprocess.PIPE, env=env, close_fds=True, process_group=0)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"address": address, "cpu": cpu, "run_id": run_id, "token": token,
                                 "log_dir": log_dir}).encode())
    proc.stdin.close()
    return proc


def child_main() -> None:
    from smpsim.engines.distributed import cpu_node
    a = json.loads(sys.stdin.read())
    sys.exit(cpu_node.cpu_main(a["address"], a["cpu"], a["run_id"], a["token"], a["log_dir"],
                               child_of_launch=True))


class Child:
    """A replacement process as launch looks at its CPU processes (multiprocessing.Process's names)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        self.proc.kill()
