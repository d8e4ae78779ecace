"""Where `smpsim launch` (and each distributed sweep point) puts its ipc socket, and every other temporary
directory of smpsim (a query's spill files, a policy check's scripts, an API run without `out`): a private one named after the process that owns it, so that one left by a process killed outright (SIGKILL runs no
clean-up) is recognised and removed by the next smpsim command (clean_orphans)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile

# smpsim-PID-XXXXXXXX (mkdtemp's 8 characters): short, for an ipc path is limited to 107 bytes; another use
# names itself before the pid (smpsim-query-PID-XXXXXXXX)
_PREFIX = "smpsim-"
_NAME = re.compile(re.escape(_PREFIX) + r"(?:[a-z]+-)?(\d+)-[a-z0-9_]{8}")


def _prefix(use: str) -> str:
    return f"{_PREFIX}{use + '-' if use else ''}{os.getpid()}-"


def temporary(use: str) -> tempfile.TemporaryDirectory:
    """A TemporaryDirectory named after this process (smpsim-USE-PID-...): removed as usual, and by the next
    smpsim command if this process is killed outright. Orphans of earlier runs are removed first."""
    clean_orphans()
    return tempfile.TemporaryDirectory(prefix=_prefix(use))


def make(use: str = "") -> str:
    """A new socket directory of this process, readable by its user only (mkdtemp makes it 0700: the
    socket's privacy rests on that). Orphans of earlier runs are removed first."""
    clean_orphans()
    path = tempfile.mkdtemp(prefix=_prefix(use))
    os.chmod(path, 0o700)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds that pid now
        return True
    try:  # a zombie (killed, not yet reaped) answers kill(0) but holds no socket
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True


def clean_orphans() -> list[str]:
    """Remove this user's socket directories whose owner process is gone; the paths removed. A directory
    whose pid has been taken by another process since stays until that one ends too."""
    removed = []
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return removed
    uid = os.getuid()
    for entry in entries:
        m = _NAME.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or _alive(int(m.group(1))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed
