"""Builds the package; compiles the model's hot modules (smpsim/native.py: MODULES) with mypyc from the
same source. If that cannot be done (no C compiler, mypyc fails), the install still succeeds, pure Python,
and says so. SMPSIM_PURE=1 at build time skips the compile."""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

_NATIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smpsim", "native.py")
native: dict = {"__file__": _NATIVE}
with open(_NATIVE) as f:  # not imported: smpsim is not installed yet
    exec(compile(f.read(), _NATIVE, "exec"), native)


def _warn(why: str) -> None:
    print(f"smpsim: the model is not compiled ({why}); installing pure Python, which runs the same "
          f"simulation more slowly", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compiling is optional: a failure leaves no half-built group behind (all compiled or none)."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # a compiler error, no compiler at all
            for out in self.get_outputs():
                if os.path.exists(out):
                    os.remove(out)
            _warn(f"the C build failed: {e}")
            return
        # Built now, from the sources as they are (smpsim/native.py: stale): the build copies, in place or in
        # an editable install, keep the times of unchanged objects.
        for out in {*self.get_outputs(), *(self.get_ext_fullpath(e.name) for e in self.extensions)}:
            if os.path.exists(out):
                os.utime(out)


def ext_modules():
    if os.environ.get(native["PURE_ENV"], "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
        return mypycify([*native["MYPY_ARGS"], *native["MODULES"]],
                        group_name=native["GROUP"], opt_level="3")
    except BaseException as e:  # mypyc reports a type error by exiting
        _warn(f"mypyc: {e!r}")
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
