"""smpsim: a distributed simulator of an SMP's translation caches and the Linux pkmap ring.

``smpsim.run``, ``smpsim.open_run``, ``smpsim.sweep``, ``smpsim.load`` and ``smpsim.Run`` are the Python
API (smpsim/api.py); ``smpsim.Policy`` is the base class of flush policies (docs/policies.md). They are
imported on first use, so ``import smpsim`` stays light: a CPU process never loads the analysis libraries.
"""

from smpsim import native as _native
from smpsim.version import __version__

_native.select()  # compiled model modules or pure Python (smpsim/native.py), before anything imports them

_API = ("run", "open_run", "sweep", "load", "Run")
_CHECK = ("check_policy",)  # smpsim/check: `smpsim policy check`
_MODEL = ("Policy", "Flush")  # smpsim.model.policies: what a user's policy file imports
__all__ = ["__version__", *_API, *_MODEL, *_CHECK]


def __getattr__(name: str):
    if name in _MODEL:
        from smpsim.model import policies

        return getattr(policies, name)
    if name in _API:
        from smpsim import api

        return getattr(api, name)
    if name in _CHECK:
        from smpsim import check

        return getattr(check, name)
    raise AttributeError(f"module 'smpsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_MODEL, *_CHECK])
