import filecmp
import tomllib
from pathlib import Path

import pytest

from smpsim.config import (Config, ConfigError, apply_override, default_config_path, load_config, parse_value,
                           to_toml, validate)

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(excinfo):
    return excinfo.value.problems


def test_default_config_is_the_packaged_one_and_valid():
    assert filecmp.cmp(ROOT / "configs" / "default.toml", ROOT / "smpsim" / "default.toml", shallow=False)
    cfg = load_config()
    assert default_config_path().name == "default.toml"
    assert (cfg.machine.cpus, cfg.policy.name, cfg.workload.kind) == (8, "linux-2.4", "zipf")
    assert (cfg.workload.pages, cfg.machine.ring_size) == (8192, 256)


def test_a_path_set_on_the_default_config_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    """`smpsim run --set policy.name=mine.py:Mine` (no config file; api.load) finds mine.py where the user
    is, not in the folder of the packaged default config; `config show` (load_experiment) likewise."""
    from smpsim import api
    from smpsim.experiments.sweep import load_experiment

    (tmp_path / "mine.py").write_text("from smpsim import Policy\n\nclass Mine(Policy):\n    name = 'mine'\n")
    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "kmap", "page": 1}\n')
    preset = next((ROOT / "smpsim" / "presets").glob("*.toml"))  # as `smpsim calibrate --out host.toml` writes
    (tmp_path / "host.toml").write_text(preset.read_text())
    monkeypatch.chdir(tmp_path)
    sets = ["policy.name=mine.py:Mine", "workload.kind=script", "workload.script=ops.jsonl",
            "machine.preset=host.toml"]
    for cfg in (load_config(None, sets), load_experiment(None, sets).points[0].cfg, api.load(None, sets)):
        assert cfg.base_dir == str(tmp_path)
        assert cfg.policy.sha256 is not None and cfg.workload.sha256 is not None
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError) as e:  # a config file's own folder still wins
        load_config(write(tmp_path / "sub", ""), sets[:1])
    assert "file not found" in str(e.value) and str(tmp_path / "sub" / "mine.py") in str(e.value)


def test_unknown_key_names_dotted_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[machine]\ncpu = 4\n"))
    assert problems(e) == ["machine.cpu: unknown key; did you mean 'machine.cpus'?"]
    assert str(tmp_path / "c.toml") in str(e.value)


def test_unknown_table(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[machnie]\ncpus = 4\n"))
    assert problems(e) == ["machnie: unknown key; did you mean 'machine'?"]


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, '[machine]\ncpus = "many"\n'))
    (msg,) = problems(e)
    assert msg.startswith("machine.cpus:") and "'many'" in msg


def test_out_of_range(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[machine]\ncpus = 0\n[workload]\nwrite_fraction = 1.5\n"))
    assert any(p.startswith("machine.cpus:") and "greater than or equal to 1" in p for p in problems(e))
    assert any(p.startswith("workload.write_fraction:") for p in problems(e))


def test_all_errors_at_once(tmp_path):
    text = ("seed = -1\n[machine]\ncpus = 0\nbogus = 1\n[tlb]\nentries = 64\nways = 3\n"
            "[policy]\nname = 'lazy'\n")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    locs = sorted(p.split(":")[0] for p in problems(e))
    assert locs == ["machine.bogus", "machine.cpus", "policy.name", "seed", "tlb"]
    assert "ways (3) must divide entries (64)" in str(e.value)


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[machine\ncpus = 4\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_script_workload_needs_a_file(tmp_path):
    with pytest.raises(ConfigError, match="workload.script"):
        load_config(write(tmp_path, "[workload]\nkind = 'script'\n"))


def test_set_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "[machine]\ncpus = 2\n"),
                      ["machine.cpus=16", "policy.name=eager", "workload.write_fraction=0.5",
                       "trace.enabled=false", "machine.last_pkmap = 64"])
    assert cfg.machine.cpus == 16 and cfg.policy.name == "eager"
    assert cfg.workload.write_fraction == 0.5 and cfg.trace.enabled is False
    assert cfg.machine.ring_size == 64


def test_parse_value():
    assert parse_value("8") == 8
    assert parse_value("true") is True
    assert parse_value("0.25") == 0.25
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value('"quoted"') == "quoted"
    assert parse_value("linux-2.4") == "linux-2.4"


@pytest.mark.parametrize("bad, message", [
    ("machine.cpus", "expected key=value"),
    ("=4", "not a dotted key"),
    ("machine..cpus=4", "not a dotted key"),
    ("seed.x=1", "seed is not a table"),
])
def test_bad_set_syntax(bad, message):
    data = {"seed": 1}
    with pytest.raises(ConfigError, match=message):
        apply_override(data, bad)


def test_set_unknown_key_is_reported_with_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, ""), ["machine.cpuz=3", "tlb.ways=x"])
    assert "machine.cpuz: unknown key; did you mean 'machine.cpus'?" in problems(e)
    assert any(p.startswith("tlb.ways:") for p in problems(e))


def test_to_toml_round_trips():
    cfg = load_config(None, ["workload.kind=script", "workload.script=ops.jsonl"])
    again = validate(tomllib.loads(to_toml(cfg)))
    assert again == Config.model_validate(cfg.model_dump())


def test_a_relative_file_given_with_set_starts_at_the_working_directory(tmp_path, monkeypatch):
    """A file named on the command line is where the user typed it, not beside the default config."""
    from smpsim.config import load_config

    (tmp_path / "mypolicy.py").write_text("import smpsim\n\nclass Mine(smpsim.Policy):\n    pass\n")
    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "ops": []}\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["policy.name=mypolicy.py:Mine", "workload.script=ops.jsonl"])
    assert cfg.policy.name == f"{tmp_path / 'mypolicy.py'}:Mine"
    assert cfg.workload.script == str(tmp_path / "ops.jsonl")
    # names stay names
    cfg = load_config(None, ["policy.name=eager", "machine.preset=kvm-guest"])
    assert (cfg.policy.name, cfg.machine.preset) == ("eager", "kvm-guest")
