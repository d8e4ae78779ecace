"""Bad input and user mistakes (issue 18 findings 8 and 11, issue 19 item 7): odd files refused up front,
damaged bytes, deep nesting and over-long numbers as `error:` paragraphs with exit 2, values quoted short,
"did you mean" for near misses, and --set written the way users write it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import invoke, user_error

from smpsim.config import load_config
from smpsim.engines import inline
from smpsim.inputs import QUOTE_CHARS
from smpsim.model.policies import check_name

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs" / "lazy-vs-eager.toml"
SCRIPT = '{"cpu": 0, "op": "kmap", "page": 1}\n{"cpu": 0, "op": "kunmap", "page": 1}\n'


@pytest.fixture(scope="module")
def a_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m") / "run"
    inline.run(load_config(None, ["machine.cpus=2", "workload.kmaps_per_cpu=20"]), out)
    return out


def _odd(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A path that is not a regular file, and the words the error must use for it."""
    if kind == "fifo":
        p = tmp_path / "odd"
        os.mkfifo(p)
        return p, "FIFO"
    if kind == "directory":
        p = tmp_path / "odd"
        p.mkdir()
        return p, "directory"
    return Path(os.devnull), "character device"


# ---- finding 8: odd files are refused up front, never opened ------------------------------------------------

@pytest.mark.timeout(30)  # before the fix, `run` on a FIFO blocked in open() until this killed it
@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
@pytest.mark.parametrize("command", [["run"], ["config", "check"]])
def test_a_config_that_is_not_a_regular_file_is_named(tmp_path, kind, command):
    path, words = _odd(tmp_path, kind)
    err = user_error(invoke(*command, path, *(["--out", tmp_path / "r"] if command == ["run"] else [])))
    assert str(path) in err and words in err and "not a regular file" in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
@pytest.mark.parametrize("command", [["run"], ["config", "check"]])
@pytest.mark.parametrize("workload", ["script", "trace"])
def test_a_workload_file_that_is_not_a_regular_file_is_named(tmp_path, kind, command, workload):
    """`run` used to hang in open() on a FIFO script while `config check` called it "file not found"; now both
    name the kind of file."""
    path, words = _odd(tmp_path, kind)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[workload]\nkind = "{workload}"\n{workload} = "{path}"\n')
    err = user_error(invoke(*command, cfg, *(["--out", tmp_path / "r"] if command == ["run"] else [])))
    assert f"workload.{workload}: {path}" in err and words in err and err.count(f"workload.{workload}") == 1, err
    assert "file not found" not in err
    assert not (tmp_path / "r").exists()


def test_a_regular_script_still_runs(tmp_path):
    (tmp_path / "s.jsonl").write_text(SCRIPT)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[machine]\ncpus = 1\n[workload]\nkind = "script"\nscript = "s.jsonl"\n')
    assert invoke("config", "check", cfg).stdout.strip() == "ok"
    assert invoke("run", cfg, "--out", tmp_path / "r").exit_code == 0


# ---- finding 11: bad bytes, deep nesting, over-long numbers ---------------------------------------------------

def test_a_config_that_is_not_utf8_is_named_with_its_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"seed = 1\n# caf\xe9\n")
    for args in (["config", "check", cfg], ["run", cfg, "--out", tmp_path / "r"]):
        err = user_error(invoke(*args))
        assert str(cfg) in err and "line 2" in err and "UTF-8" in err and "internal error" not in err, err


@pytest.mark.parametrize("content, words", [(bytes(range(256)) * 4, "UTF-8"),
                                             (b"[" * 100_000, "nested too deeply"),
                                             (b'{"events": ' + b"1" * 5000 + b"}", "an integer of more than")])
def test_a_damaged_summary_is_named(a_run, tmp_path, content, words):
    run = tmp_path / "run"
    shutil.copytree(a_run, run)
    (run / "summary.json").write_bytes(content)
    for args in (["analyze", run], ["query", run, "SELECT 1"], ["compare", run, a_run]):
        err = user_error(invoke(*args))
        assert f"{run / 'summary.json'}" in err and words in err and "internal error" not in err, err
        assert len(err) < 1000


def test_a_run_config_with_bad_bytes_does_not_stop_the_analysis(a_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(a_run, run)
    with open(run / "config.toml", "ab") as f:
        f.write(b"\xff\xfe\x00")
    for args in (["analyze", run], ["query", run, "SELECT count(*) FROM events"], ["compare", run, a_run]):
        r = invoke(*args)
        assert r.exit_code == 0 and "internal error" not in r.output, r.output


def test_a_deeply_nested_config_file_is_refused(tmp_path):
    arrays = tmp_path / "arrays.toml"
    arrays.write_text("seed = " + "[" * 5000 + "]" * 5000 + "\n")
    tables = tmp_path / "tables.toml"
    tables.write_text("[" + ".".join(["a"] * 3000) + "]\n")
    for cfg in (arrays, tables):
        err = user_error(invoke("config", "check", cfg))
        assert str(cfg) in err and "nested more than" in err and "RecursionError" not in err, err
        assert len(err) < 1000


@pytest.mark.parametrize("assignment, key", [
    ("seed=" + "[" * 3000 + "]" * 3000, "seed"),
    ("seed=" + "[" * 40 + "]" * 40, "seed"),
    (".".join(["machine"] * 3000) + "=1", "machine.machine"),
])
def test_deep_set_values_and_keys_are_refused(assignment, key):
    err = user_error(invoke("config", "show", "--set", assignment))
    assert key in err and "RecursionError" not in err and "internal error" not in err, err
    assert len(err) < 1000


def test_an_over_long_integer_is_named_by_its_key(tmp_path):
    err = user_error(invoke("run", "--set", "seed=" + "1" * 100_000, "--out", tmp_path / "r"))
    assert err.startswith("error: invalid configuration (--set)") and "seed: an integer of more than" in err, err
    assert "set_int_max_str_digits" not in err and len(err) < 1000
    cfg = tmp_path / "c.toml"
    cfg.write_text("seed = " + "1" * 100_000 + "\n")
    err = user_error(invoke("config", "check", cfg))
    assert str(cfg) in err and "an integer of more than" in err and len(err) < 1000, err


@pytest.mark.parametrize("assignment", ["machine.arch=" + "x" * 100_000, "seed=" + "9" * 4000,
                                        "sweep.machine.cpus=" + "y" * 100_000, "machine.preset=" + "x" * 100_000,
                                        "x" * 100_000 + "=1", "sweep." + "x" * 100_000 + "=[1]",
                                        "report.baseline." + "x" * 100_000 + "=1", "x" * 100_000])
def test_errors_quote_at_most_200_characters_of_a_value(assignment):
    err = user_error(invoke("config", "show", EXPERIMENT, "--set", assignment))
    assert "characters)" in err and len(err) < 2 * QUOTE_CHARS + 400, err
    assert max(len(word) for word in err.split()) <= QUOTE_CHARS + 20  # a key or value, cut, and its prefix


# ---- issue 19 item 7: mistakes that cost time ------------------------------------------------------------

@pytest.mark.parametrize("assignment, suggestion", [
    ("workload.kmap_per_cpu=10", "did you mean 'workload.kmaps_per_cpu'?"),
    ("machin.cpus=4", "did you mean 'machine'?"),
    ("policy.name=linux24", "did you mean 'linux-2.4'?"),
    ("policy.name=eagr", "did you mean 'eager'?"),
    ("workload.kind=unifrom", "did you mean 'uniform'?"),
    ("run.engine=distrbuted", "did you mean 'distributed'?"),
])
def test_near_misses_get_a_did_you_mean(assignment, suggestion):
    err = user_error(invoke("config", "show", "--set", assignment))
    assert suggestion in err, err


def test_far_misses_get_no_suggestion():
    err = user_error(invoke("config", "show", "--set", "policy.name=zzzzzz"))
    assert "did you mean" not in err and "linux-2.4" in err  # the choices are still listed


def test_did_you_mean_in_a_file_a_sweep_and_a_report(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[workload]\nkmap_per_cpu = 10\n[sweep]\n"machine.cpu" = [2, 4]\n'
                   '[report]\nbaseline = {"policy.nme" = "eager"}\n')
    err = user_error(invoke("config", "check", cfg))
    assert "workload.kmap_per_cpu: unknown key; did you mean 'workload.kmaps_per_cpu'?" in err, err
    assert "[sweep] machine.cpu: unknown key; did you mean 'machine.cpus'?" in err, err
    assert "did you mean 'policy.name'?" in err, err


def test_policy_lookup_says_the_closest_name():
    assert check_name("eager") is None and check_name("pkg.mod:Class") is None
    assert check_name("linux26").startswith("'linux26': not a policy name; did you mean 'linux-2.6'? (built-in")


@pytest.mark.parametrize("command", [["run"], ["config", "show"], ["sweep"]])
def test_set_without_equals_names_the_missing_equals(tmp_path, command):
    """`--set machine.cpus 16` used to say `invalid configuration (16): - file not found`."""
    err = user_error(invoke(*command, "--set", "machine.cpus", "16"))
    assert "'machine.cpus'" in err and "no '='" in err and "--set machine.cpus=16" in err, err
    assert "file not found" not in err


@pytest.mark.parametrize("args", [["launch"], ["sweep", EXPERIMENT]])
def test_set_without_equals_is_named_where_the_value_is_an_extra_argument(args):
    err = user_error(invoke(*args, "--set", "machine.cpus", "16"))
    assert "unexpected extra argument" in err and "--set machine.cpus has no '=': write --set machine.cpus=16" in err


def test_quoted_dotted_sweep_keys_are_accepted():
    quoted = invoke("config", "show", EXPERIMENT, "--set", 'sweep."machine.cpus"=[8, 32]')
    bare = invoke("config", "show", EXPERIMENT, "--set", "sweep.machine.cpus=[8, 32]")
    assert quoted.exit_code == 0 and quoted.stdout == bare.stdout, quoted.output
    assert '"machine.cpus" = [8, 32]' in quoted.stdout
    check = invoke("config", "check", EXPERIMENT, "--set", "sweep.'machine.cpus'=[8, 32]",
                   "--set", 'report.by=["workload.kind", "machine.cpus"]')
    plain = invoke("config", "check", EXPERIMENT)
    n_plain = int(plain.stdout.split("sweep of ")[1].split()[0])
    assert check.stdout.strip() == f"ok: a sweep of {2 * n_plain} points"


def test_quoted_keys_work_outside_the_sweep_too():
    r = invoke("config", "show", "--set", '"machine"."cpus"=16', "--set", "report.baseline.'policy.name'=eager")
    assert r.exit_code == 0 and "cpus = 16" in r.stdout, r.output


# ---- finding 7: queries stop --------------------------------------------------------------------------------

SLOW = "SELECT count(*) FROM range(1000000000) a, range(1000000000) b WHERE a.range + b.range = 7"


def _spill_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("smpsim-query-*"))


def _cpu_seconds(proc) -> float:
    import psutil

    try:
        t = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def _busy_query(a_run, tmp: Path, smpsim_cmd, subprocess_env):
    """`smpsim query` of a cross join with TMPDIR=tmp, returned once it runs: its spill directory exists and
    DuckDB is burning CPU."""
    import subprocess
    import time

    proc = subprocess.Popen([*smpsim_cmd, "query", a_run, SLOW], env={**subprocess_env,
                            "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _spill_dirs(tmp) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = _cpu_seconds(proc) + 0.5
    while _cpu_seconds(proc) < busy and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum, code, name", [(2, 130, "SIGINT"), (15, 143, "SIGTERM")])
def test_a_signal_cancels_a_running_query(a_run, tmp_path, smpsim_cmd, subprocess_env, signum, code, name):
    """Before the fix, a cross join ran on after two SIGINTs (DuckDB holds the main thread until the query
    ends) and only SIGTERM stopped it, silently."""
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _busy_query(a_run, tmp, smpsim_cmd, subprocess_env)
    try:
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert err.startswith(f"error: query cancelled (interrupted by {name}); nothing was written"), err
    assert "Traceback" not in err and out == ""
    assert time.monotonic() - sent < 15
    assert _spill_dirs(tmp) == []


@pytest.mark.timeout(90)
def test_the_spill_directory_of_a_killed_query_is_removed_by_the_next_command(a_run, tmp_path, smpsim_cmd,
                                                                              subprocess_env):
    """SIGKILL runs no clean-up: the directory is named after its process, and the next smpsim command that
    finds that process gone removes it."""
    import subprocess

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _busy_query(a_run, tmp, smpsim_cmd, subprocess_env)
    try:
        assert proc.poll() is None, proc.communicate()
        proc.kill()
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert len(_spill_dirs(tmp)) == 1
    r = subprocess.run([*smpsim_cmd, "config", "check", "configs/default.toml"], env={**subprocess_env,
                       "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _spill_dirs(tmp) == []


@pytest.mark.timeout(60)
def test_a_query_stops_at_its_timeout(a_run, tmp_path, monkeypatch):
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    start = time.monotonic()
    err = user_error(invoke("query", a_run, SLOW, "--timeout", "0.5"))
    assert err.startswith("error: query failed: stopped after 0.5 s (--timeout)") and "--timeout 0" in err, err
    assert time.monotonic() - start < 20
    assert _spill_dirs(tmp_path) == []


def test_the_memory_limit_defaults_to_a_quarter_of_ram_and_spills_to_a_removed_directory(a_run, tmp_path,
                                                                                           monkeypatch):
    import tempfile

    import psutil

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    r = invoke("query", a_run, "SELECT current_setting('memory_limit') AS m, current_setting('temp_directory') AS d",
               "--format", "json")
    (row,) = __import__("json").loads(r.stdout)
    value, unit = row["m"].split()
    quarter = psutil.virtual_memory().total / 4 / {"MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
    assert abs(float(value) - quarter) <= 0.02 * quarter, (row, quarter)
    assert Path(row["d"]).parent == tmp_path and Path(row["d"]).name.startswith("smpsim-query-")
    # More than the limit holds: DuckDB spills into that directory, and it is gone afterwards.
    r = invoke("query", a_run, "SELECT count(*) FROM (SELECT range FROM range(5000000) ORDER BY hash(range))",
               "--memory-limit", "30MB", "--format", "csv")
    assert r.exit_code == 0 and r.stdout.splitlines()[1] == "5000000", r.output
    assert _spill_dirs(tmp_path) == []


def test_a_bad_memory_limit_and_running_out_are_named(a_run):
    err = user_error(invoke("query", a_run, "SELECT 1", "--memory-limit", "lots"))
    assert "--memory-limit 'lots': not a size" in err, err
    err = user_error(invoke("query", a_run, "SELECT string_agg(repeat('x', 100), ',') FROM range(3000000)",
                            "--memory-limit", "20MB"))
    assert "Out of Memory" in err and "raise it with --memory-limit" in err and "SET " not in err, err


@pytest.mark.parametrize("sql", ["SELECT * FROM glob('{spill}/*')", "COPY (SELECT 1) TO '{spill}/x.csv'",
                                 "SET temp_directory = '/tmp'", "SET memory_limit = '100GB'"])
def test_the_spill_directory_is_out_of_the_sandbox_s_reach(a_run, tmp_path, monkeypatch, sql):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    err = user_error(invoke("query", a_run, sql.format(spill=tmp_path / "smpsim-query-x")))
    assert "disabled" in err or "locked" in err or "read-only" in err, err


def test_a_token_file_that_is_not_text_is_named(tmp_path):
    """Before: `internal error: UnicodeDecodeError` (exit 1)."""
    bad = tmp_path / "token"
    bad.write_bytes(b"\xff\xfe\x00bad")
    err = user_error(invoke("cpu", "--coordinator", "tcp://127.0.0.1:1", "--cpu-id", "0", "--token-file", str(bad)))
    assert f"--token-file {bad}: not a run token" in err and "UnicodeDecodeError" not in err
