"""What a user hands smpsim, checked before it is used: the kind of a file given as a path, values quoted in
error messages (never whole), and "did you mean" for a near miss. Standard library only: the config, the
CLI and the API all use it.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Errors quote at most this many characters of a value the user gave (a 100 KB --set value is not echoed).
QUOTE_CHARS = 200

# Config data (tables, lists) nested deeper than this is refused before anything recurses into it: a real
# config is 2 levels deep (machine.cpus), a sweep or report key 4; thousands would blow Python's stack.
MAX_NESTING = 16
TOO_DEEP = f"nested more than {MAX_NESTING} levels deep"
# Python refuses to convert longer digit strings (sys.get_int_max_str_digits); no config value comes close.
TOO_LONG_INTEGER = f"an integer of more than {sys.get_int_max_str_digits():,} digits"

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def quote(value: Any) -> str:
    """repr(value), cut to its first QUOTE_CHARS characters with the full length said."""
    return cut(repr(value))


def cut(text: str) -> str:
    """Text the user gave (a key, a name), cut to its first QUOTE_CHARS characters with the full length said."""
    if len(text) <= QUOTE_CHARS:
        return text
    return f"{text[:QUOTE_CHARS]}... ({len(text):,} characters)"


def did_you_mean(given: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or "" when none is close."""
    if not isinstance(given, str) or len(given) > QUOTE_CHARS:
        return ""
    close = difflib.get_close_matches(given, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file (missing, a directory, a FIFO, a device, a socket), or
    None for a regular file. Checked with stat, so a FIFO or a device is never opened (open() on a FIFO
    blocks until a writer comes)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    for test, kind in _KINDS:
        if test(mode):
            return f"is {kind}, not a regular file"
    return None


def nesting_problem(value: Any) -> str | None:
    """Where tables or lists in ``value`` nest deeper than MAX_NESTING (a dotted path), or None. Iterative,
    so it cannot itself run out of stack."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_NESTING:
            where = where if len(where) <= QUOTE_CHARS else where[:QUOTE_CHARS] + "..."
            return f"{where or 'the value'}: {TOO_DEEP}"
        if isinstance(node, dict):
            stack += [(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in node.items()]
        elif isinstance(node, list):
            stack += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node)]
    return None


def undecodable(data: bytes, err: UnicodeDecodeError) -> str:
    """Where a file's bytes stop being UTF-8: line and byte, for the error message."""
    line = data.count(b"\n", 0, err.start) + 1
    return f"line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
