"""`smpsim calibrate --vmap`, the host half: drive lazy vfrees through BPF array maps and record them.

A BPF array map larger than 32 KiB is vmalloc'd (bpf_map_area_alloc, kernel/bpf/syscall.c) and vfree'd when
its last fd closes (from a workqueue). So creating maps with bpf(BPF_MAP_CREATE) and closing each at once
makes one alloc_vmap_area and one free_vmap_area_noflush per map, and a purge_vmap_area_lazy whenever
vmap_lazy_nr passes lazy_max_pages(). The tracepoints are global (frees and purges run in kworkers), so the
recording holds every vmalloc user of the host; the replay takes them all.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from smpsim.calibrate.host import CalibrationError, _Instance, find_tracefs
from smpsim.calibrate.trace import _cpulist
from smpsim.calibrate.vmap import VEvent, header, parse_vmap
from smpsim.engines.stopping import STOP_SIGNALS, raising_on_signals
from smpsim.model.vmalloc import PAGE_SIZE

VMAP_EVENTS = ("vmalloc/alloc_vmap_area", "vmalloc/free_vmap_area_noflush", "vmalloc/purge_vmap_area_lazy")
IPI_EVENTS = ("ipi/ipi_send_cpu", "ipi/ipi_send_cpumask")
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2
VALUE_SIZE = PAGE_SIZE
MIN_KIB, MAX_KIB = 40, 64 << 10   # below ~32 KiB bpf_map_area_alloc uses kmalloc; bound the memory per map
MAX_MAPS = 20_000
FREE_TIMEOUT_S = 10.0


class _MapAttr(ctypes.Structure):
    """union bpf_attr's BPF_MAP_CREATE prefix, zero-padded to the size the kernel accepts from any caller."""
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("_pad", ctypes.c_uint8 * 108)]


_libc = ctypes.CDLL(None, use_errno=True)


def _bpf_nr() -> int:
    nr = BPF_SYSCALL.get(platform.machine())
    if nr is None:
        raise CalibrationError(f"the bpf syscall number of {platform.machine()} is not known to smpsim "
                               f"(known: {', '.join(BPF_SYSCALL)})")
    return nr


def create_array_map(entries: int, value_size: int = VALUE_SIZE) -> None:
    """Create a BPF array map (4-byte keys) and close it at once: one vmalloc and, later, one lazy vfree."""
    attr = _MapAttr(BPF_MAP_TYPE_ARRAY, 4, value_size, entries, 0)
    fd = _libc.syscall(_bpf_nr(), BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise CalibrationError(f"bpf(BPF_MAP_CREATE) of an array map of {entries} x {value_size} B failed: "
                               f"{os.strerror(err)}; the bpf syscall needs root (CAP_BPF) and a kernel with "
                               f"CONFIG_BPF_SYSCALL")
    os.close(fd)


def entries_for(kib: int) -> int:
    """Entries of VALUE_SIZE so that the map's vmalloc area (values plus the struct bpf_array header, rounded
    up to pages) is ``kib`` KiB; the guard page comes on top."""
    return kib * 1024 // VALUE_SIZE - 1


def online_cpus() -> int:
    """num_online_cpus(), from sysfs."""
    try:
        return len(_cpulist(Path("/sys/devices/system/cpu/online").read_text().strip()))
    except OSError:
        return os.cpu_count() or 1


def unpurged() -> tuple[int, int]:
    """(areas, pages) waiting for a purge now: /proc/vmallocinfo lists them as "unpurged vm_area"."""
    areas = pages = 0
    try:
        text = Path("/proc/vmallocinfo").read_text()
    except OSError as e:
        raise CalibrationError(f"cannot read /proc/vmallocinfo ({e.strerror}): run as root") from None
    for line in text.splitlines():
        if line.endswith("unpurged vm_area"):
            areas += 1
            pages += int(line.split()[1]) // PAGE_SIZE
    return areas, pages


@dataclass
class Recording:
    """A vmalloc trace recorded on this host (the text, the map size and count, the areas waiting before it)
    and its parsed events."""
    kib: int
    maps: int
    ncpus: int
    pre_areas: int
    pre_pages: int
    kernel: str
    text: str                 # the trace, with the header line first

    @property
    def events(self) -> list[VEvent]:
        return parse_vmap(self.text, f"the recording of {self.kib} KiB maps")


def _outstanding(text: str, pid: int) -> int:
    """Areas this process allocated in the trace that no free has released yet."""
    live: dict[int, int] = {}
    for e in parse_vmap(text):
        if e.kind == "alloc" and e.pid == pid:
            live[e.addr] = live.get(e.addr, 0) + 1
        elif e.kind == "free" and live.get(e.addr):
            live[e.addr] -= 1
    return sum(live.values())


def check_host(tracefs: str | None = None) -> Path:
    """The tracefs root, after checking root, the vmalloc events and the bpf syscall (CalibrationError)."""
    if os.geteuid() != 0:
        raise CalibrationError("smpsim calibrate --vmap needs root (a tracefs instance, bpf(BPF_MAP_CREATE) "
                               "and /proc/vmallocinfo): run it as root")
    root = find_tracefs(tracefs, VMAP_EVENTS)
    create_array_map(1, 4)  # a tiny map (kmalloc'd): does the bpf syscall work at all?
    return root


@contextmanager
def _private_instance(root: Path, name: str) -> Iterator[_Instance]:
    """A tracefs instance removed however the block ends: a signal right after its mkdir included, and with
    the stop signals held back while it is removed."""
    inst = _Instance(root, name)
    try:
        inst.__enter__()
        yield inst
    finally:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if inst.dir.exists():
                inst.__exit__(None, None, None)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def record(sizes_kib: list[int], maps: list[int], tracefs: str | None = None, pace_us: int = 1000) -> list[Recording]:
    """Per size, trace ``maps`` map creations and closes, waiting until each map's area is freed."""
    root = check_host(tracefs)
    kernel, ncpus, pid = os.uname().release, online_cpus(), os.getpid()
    out = []
    with raising_on_signals(), _private_instance(root, f"smpsim-vmap-{pid}") as inst:
        inst.write("tracing_on", "0")
        inst.write("trace_clock", "mono")
        inst.write("buffer_size_kb", "4096")
        for e in VMAP_EVENTS:
            inst.enable(e)
        for e in IPI_EVENTS:
            if inst.enable(e):  # function-call IPIs only: reschedule IPIs (no callback) would fill the buffer
                try:
                    inst.write(f"events/{e}/filter", "callback != 0")
                except OSError:
                    pass  # an older kernel without the field: the parser skips them instead
        for kib, n in zip(sizes_kib, maps):
            inst.write("trace", "")  # empty the buffer of the previous size
            pre_areas, pre_pages = unpurged()
            inst.write("tracing_on", "1")
            for _ in range(n):
                create_array_map(entries_for(kib))
                if pace_us:  # let the drain worker run right after the free that crosses the limit
                    time.sleep(pace_us / 1e6)
            deadline = time.monotonic() + FREE_TIMEOUT_S
            while (left := _outstanding(inst.read(), pid)) and time.monotonic() < deadline:
                time.sleep(0.05)  # the frees run from a workqueue; poll the trace for them, bounded
            inst.write("tracing_on", "0")
            if left:
                raise CalibrationError(f"{left} of {n} maps of {kib} KiB were not freed within "
                                       f"{FREE_TIMEOUT_S:.0f} s of the last close")
            text = header(ncpus, pre_pages, pre_areas, kernel) + inst.read()
            out.append(Recording(kib, n, ncpus, pre_areas, pre_pages, kernel, text))
    return out
