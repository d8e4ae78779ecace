"""smpsim.usercode: specs to objects, with the source's hash, one error type naming spec, file and line."""

from __future__ import annotations

import hashlib
import sys
import textwrap

import pytest

from smpsim import usercode
from smpsim.usercode import UserCodeError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_file_spec_relative_to_base_dir_with_the_sources_hash(tmp_path):
    f = write(tmp_path / "lab" / "mine.py", "class Thing:\n    x = 1\n")
    got = usercode.load("lab/mine.py:Thing", base_dir=tmp_path)
    assert got.obj.x == 1
    assert got.file == str(f.resolve())
    assert got.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert sys.modules[got.module].Thing is got.obj
    assert usercode.source_sha256("lab/mine.py:Thing", tmp_path) == (got.file, got.sha256)


def test_absolute_path_and_dotted_attribute(tmp_path):
    f = write(tmp_path / "nested.py", "class Outer:\n    class Inner:\n        y = 2\n")
    assert usercode.load(f"{f}:Outer.Inner", base_dir="/nonexistent").obj.y == 2


def test_a_file_runs_once_per_content_and_same_basenames_do_not_collide(tmp_path):
    a = write(tmp_path / "a" / "policy.py", "import itertools\nRUNS = []\nRUNS.append(1)\nclass P: who = 'a'\n")
    write(tmp_path / "b" / "policy.py", "class P: who = 'b'\n")
    first = usercode.load("a/policy.py:P", tmp_path)
    again = usercode.load(f"{a}:P")
    assert again.obj is first.obj and len(sys.modules[first.module].RUNS) == 1
    other = usercode.load("b/policy.py:P", tmp_path)
    assert (first.obj.who, other.obj.who) == ("a", "b") and first.module != other.module
    a.write_text("class P: who = 'edited'\n")  # an edit is new code: it runs
    edited = usercode.load("a/policy.py:P", tmp_path)
    assert edited.obj.who == "edited" and edited.sha256 != first.sha256


def test_module_spec(tmp_path, monkeypatch):
    write(tmp_path / "labpkg" / "__init__.py", "")
    f = write(tmp_path / "labpkg" / "pol.py", "def make():\n    return 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    got = usercode.load("labpkg.pol:make")
    assert got.obj() == 7 and got.file == str(f) and got.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.parametrize("spec, words", [
    ("nothere.py:P", ["'nothere.py:P'", "nothere.py", "file not found"]),
    ("ok.py:Missing", ["no 'Missing' in", "ok.py", "it defines Here"]),
    ("ok.py:not-a-name", ["not a Python name"]),
    ("no_such_module_xyz:P", ["no module named 'no_such_module_xyz'"]),
    ("no_such_pkg_xyz.sub:P", ["no module named 'no_such_pkg_xyz'"]),
    ("plain", ["not a spec"]),
])
def test_errors_name_the_spec_the_file_and_the_problem(tmp_path, spec, words):
    write(tmp_path / "ok.py", "class Here: pass\n")
    with pytest.raises(UserCodeError) as e:
        usercode.load(spec, tmp_path)
    for w in words:
        assert w in str(e.value)


def test_syntax_error_and_failing_import_name_the_line(tmp_path):
    write(tmp_path / "bad.py", "x = 1\ndef f(:\n    pass\n")
    with pytest.raises(UserCodeError) as e:
        usercode.load("bad.py:f", tmp_path)
    assert e.value.line == 2 and e.value.file.endswith("bad.py") and "syntax error" in str(e.value)
    assert f"{tmp_path / 'bad.py'}:2" in str(e.value)

    f = write(tmp_path / "boom.py", "import os\n\nraise RuntimeError('no lab here')\n")
    with pytest.raises(UserCodeError) as e:
        usercode.load("boom.py:P", tmp_path)
    assert (e.value.file, e.value.line) == (str(f), 3)
    assert "import failed: RuntimeError: no lab here" in str(e.value)
    assert not [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(f)]

    write(tmp_path / "dep.py", "import not_installed_anywhere_xyz\n")
    with pytest.raises(UserCodeError, match="ModuleNotFoundError.*not_installed_anywhere_xyz") as e:
        usercode.load("dep.py:P", tmp_path)
    assert e.value.line == 1


def test_expected_hash_refuses_a_different_copy_before_running_it(tmp_path):
    f = write(tmp_path / "p.py", "import builtins\nbuiltins.SMPSIM_TEST_RAN = True\nclass P: pass\n")
    theirs = "0" * 64
    with pytest.raises(UserCodeError) as e:
        usercode.load("p.py:P", tmp_path, expect_sha256=theirs)
    mine = hashlib.sha256(f.read_bytes()).hexdigest()
    assert mine in str(e.value) and theirs in str(e.value)
    import builtins
    assert not hasattr(builtins, "SMPSIM_TEST_RAN")
    assert usercode.load("p.py:P", tmp_path, expect_sha256=mine).sha256 == mine
    del builtins.SMPSIM_TEST_RAN


def test_raised_at_and_definition_point_into_the_users_file(tmp_path):
    f = write(tmp_path / "hooks.py", "class P:\n    def hook(self):\n        return 1 // 0\n")
    P = usercode.load("hooks.py:P", tmp_path).obj
    assert usercode.definition(P) == (str(f), 1)
    with pytest.raises(ZeroDivisionError) as e:
        P().hook()
    assert usercode.raised_at(e.value, (str(f),)) == (str(f), 3)


def test_absolute_makes_a_relative_file_spec_independent_of_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert usercode.absolute("lab/p.py:P") == f"{tmp_path / 'lab' / 'p.py'}:P"
    assert usercode.absolute("p.py:P", "/x") == "/x/p.py:P"
    assert usercode.absolute("pkg.mod:P") == "pkg.mod:P" and usercode.absolute("linux-2.4") == "linux-2.4"
