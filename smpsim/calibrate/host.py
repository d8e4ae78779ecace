"""Measure this host's TLB-shootdown costs through tracefs (needs root and a mounted tracefs).

The load: one thread keeps another CPU busy in this address space inside zlib (which releases the GIL), so
that CPU holds the mm's translations; meanwhile a second thread, on CPU 0, maps, touches and unmaps a page
again and again. Each munmap then flushes locally and shoots the page down on the busy CPU by IPI, and the
kernel's tracepoints time both ends. A private tracefs instance keeps the global trace buffer untouched.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from smpsim.calibrate.trace import Pairs, pair, parse

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
EVENTS = ("tlb/tlb_flush", "ipi/ipi_send_cpu", "ipi/ipi_send_cpumask",
          "irq_vectors/call_function_entry", "irq_vectors/call_function_exit",
          "irq_vectors/call_function_single_entry", "irq_vectors/call_function_single_exit")
REQUIRED = ("tlb/tlb_flush",)
ENABLE_HINT = "as root: mount -t tracefs nodev /sys/kernel/tracing"


class CalibrationError(Exception):
    """The host cannot be measured; the message says why and how to fix it."""


def find_tracefs(path: str | None = None, required: tuple[str, ...] = REQUIRED) -> Path:
    """The tracefs mount with the events we need, or CalibrationError naming what is missing."""
    cands = [path] if path else list(TRACEFS_CANDIDATES)
    for c in cands:
        p = Path(c)
        if (p / "events").is_dir():
            missing = [e for e in required if not (p / "events" / e).is_dir()]
            if missing:
                raise CalibrationError(f"tracefs at {p} has no {', '.join(missing)} event: this kernel was "
                                       f"built without it (x86 kernels have tlb:tlb_flush and vmalloc:*)")
            if not os.access(p / "instances", os.W_OK):
                raise CalibrationError(f"tracefs at {p} is not writable by this user: run smpsim calibrate as "
                                       f"root (it creates a private tracefs instance)")
            return p
    where = " or ".join(cands)
    raise CalibrationError(f"tracefs is not mounted at {where}; {ENABLE_HINT}")


@dataclass
class Measurement:
    """What one calibration run on this host measured: the paired shootdowns, the munmap timings (local and
    bare, the floors) and the kernel and CPUs they were taken on."""
    pairs: Pairs
    munmaps: int
    local_munmap_ns: list[int]   # munmap of a touched page with no other CPU in the address space
    bare_munmap_ns: list[int]    # munmap of a page never touched (no PTE, so no flush): syscall floor
    kernel: str
    cpus: tuple[int, int]


class _Instance:
    """A tracefs instance (its own ring buffer), removed on exit."""

    def __init__(self, root: Path, name: str):
        self.dir = root / "instances" / name
        self.enabled: list[str] = []

    def __enter__(self) -> "_Instance":
        self.dir.mkdir()
        return self

    def write(self, rel: str, value: str) -> None:
        (self.dir / rel).write_text(value)

    def enable(self, event: str) -> bool:
        if not (self.dir / "events" / event).is_dir():
            return False
        self.write(f"events/{event}/enable", "1")
        self.enabled.append(event)
        return True

    def read(self) -> str:
        return (self.dir / "trace").read_text()

    def __exit__(self, *exc) -> None:
        try:
            self.write("tracing_on", "0")
            for e in self.enabled:
                self.write(f"events/{e}/enable", "0")
        finally:
            os.rmdir(self.dir)


def _munmap_times(n: int, touch: bool) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        m = mmap.mmap(-1, mmap.PAGESIZE)
        if touch:
            m[0] = 1
        t0 = clock()
        m.close()
        out.append(clock() - t0)
    return out


def measure(munmaps: int = 20_000, tracefs: str | None = None, timeout_s: float = 120.0) -> Measurement:
    """Run the load under tracing and pair the events."""
    root = find_tracefs(tracefs)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise CalibrationError(f"this process may run on {len(cpus)} CPU only; a shootdown needs two "
                               f"(check taskset / the container's CPU limit)")
    here, busy_cpu = cpus[0], cpus[1]
    # Local costs first, with no other thread in the address space: no IPIs.
    os.sched_setaffinity(0, {here})
    n_local = min(munmaps, 5000)
    bare = _munmap_times(n_local, touch=False)
    local = _munmap_times(n_local, touch=True)

    stop = threading.Event()
    ready = threading.Event()
    tids: list[int] = []

    def busy() -> None:
        os.sched_setaffinity(0, {busy_cpu})
        tids.append(threading.get_native_id())
        buf = os.urandom(1 << 16) * 64
        ready.set()
        while not stop.is_set():
            zlib.compress(buf, 1)  # releases the GIL: this CPU keeps running in our mm

    t = threading.Thread(target=busy, name="smpsim-calibrate-busy", daemon=True)
    with _Instance(root, f"smpsim-calibrate-{os.getpid()}") as inst:
        inst.write("tracing_on", "0")
        inst.write("trace_clock", "mono")   # one clock for all CPUs: sends and flushes are compared across
        inst.write("buffer_size_kb", str(max(4096, munmaps // 2)))
        for e in EVENTS:
            inst.enable(e)
        t.start()
        try:
            if not ready.wait(timeout=10):
                raise CalibrationError("the load thread did not start within 10 s")
            inst.write("set_event_pid", " ".join(str(x) for x in (*tids, threading.get_native_id())))
            inst.write("tracing_on", "1")
            deadline = time.monotonic() + timeout_s
            for i in range(0, munmaps, 1000):
                _munmap_times(min(1000, munmaps - i), touch=True)
                if time.monotonic() > deadline:
                    raise CalibrationError(f"the load did not finish within {timeout_s:.0f} s")
            inst.write("tracing_on", "0")
        finally:
            stop.set()
            t.join(timeout=10)
            os.sched_setaffinity(0, set(cpus))
        text = inst.read()
    return Measurement(pair(parse(text)), munmaps, local, bare, os.uname().release, (here, busy_cpu))
