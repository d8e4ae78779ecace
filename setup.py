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
        # Beside each compiled module, in place and in the build directory (an editable install copies one to
        # the other), the checksum of the source it was compiled from (smpsim/native.py: stale).
        for ext in self.extensions:
            digest = _compiled_from.get(ext.name)
            name = self.get_ext_filename(ext.name)
            for out in {self.get_ext_fullpath(ext.name), *(o for o in self.get_outputs() if o.endswith(name))}:
                stamp = out + native["HASH_SUFFIX"]
                if digest is not None and os.path.exists(out):
                    with open(stamp, "w") as f:
                        f.write(digest + "\n")
                elif os.path.exists(stamp):  # an earlier build's
                    os.remove(stamp)


# module name -> the checksum of its source as mypyc read it; a source edited while mypyc read it gets none, so
# the import runs it pure.
_compiled_from: dict[str, str] = {}


def ext_modules():
    if os.environ.get(native["PURE_ENV"], "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
        before = {m: native["source_hash"](m) for m in native["MODULES"]}
        extensions = mypycify([*native["MYPY_ARGS"], *native["MODULES"]],
                              group_name=native["GROUP"], opt_level="3")
    except BaseException as e:  # mypyc reports a type error by exiting
        _warn(f"mypyc: {e!r}")
        return []
    for module, digest in before.items():
        if native["source_hash"](module) == digest:
            _compiled_from[module[:-3].replace("/", ".")] = digest
    return extensions


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
