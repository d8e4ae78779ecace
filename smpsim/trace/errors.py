import os
import re


class TraceError(Exception):
    """A run directory or trace that cannot be used: not a run directory, a corrupt or missing part, ...

    The message always names the path concerned.
    """


class TraceWriteError(Exception):
    """A run that started could not write what it simulated (a full disk, an I/O error): the run failed (exit
    1), it is no user mistake. The message names the first write that failed; ``unsaved`` lists what could
    not be written after it (summary.json, provenance.json), so the user knows what is missing."""

    def __init__(self, what: str, err: BaseException):
        super().__init__(what)
        self.what, self.reason = what, os_reason(err)
        self.unsaved: list[str] = []

    def __str__(self) -> str:
        text = f"{self.reason} while writing {self.what}"
        if self.unsaved:
            text += (f"; {' and '.join(self.unsaved)} could not be written either (what was written before "
                     "the failure is kept)")
        return text


_ERRNO = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


def os_reason(err: BaseException) -> str:
    """What went wrong in an OS write, in lower case: "no space left on device". pyarrow's errors carry the
    errno only in their text."""
    code = getattr(err, "errno", None)
    if not isinstance(code, int):
        m = _ERRNO.search(str(err))
        code = int(m.group(1)) if m else None
    text = os.strerror(code) if code else (getattr(err, "strerror", None) or str(err))
    return text[:1].lower() + text[1:]
