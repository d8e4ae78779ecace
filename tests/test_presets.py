"""Cost presets (machine.preset): every figure has a source, presets fill only what a config leaves out."""

from __future__ import annotations

import pytest

from smpsim import presets
from smpsim.config import ConfigError, Cost, load_config, validate


@pytest.mark.parametrize("name", presets.builtin())
def test_every_builtin_figure_has_a_source(name):
    data = presets.read(name, keys=Cost.model_fields)
    assert data["preset"]["name"] == name and data["preset"]["description"]
    assert data["cost"], f"{name} sets no cost"
    for key, fig in data["cost"].items():
        assert key in Cost.model_fields
        assert len(fig["source"]) > 30, f"{name}: cost.{key} needs a real source"


def test_builtins_exist():
    assert {"kvm-guest", "server-2017"} <= set(presets.builtin())


def test_preset_fills_costs_and_explicit_keys_win(tmp_path):
    cfg = load_config(None, ["machine.preset=kvm-guest", "cost.ipi_handler=123"])
    want = presets.costs("kvm-guest", keys=Cost.model_fields)
    assert cfg.cost.ipi_latency == want["ipi_latency"] != Cost().ipi_latency
    assert cfg.cost.ipi_handler == 123
    assert cfg.cost.access == Cost().access  # not in the preset: the schema default


def test_resolved_config_needs_no_preset_file(tmp_path):
    """A resolved config (as shipped to CPU processes on other hosts) keeps its values without the file."""
    f = tmp_path / "p.toml"
    f.write_text('[preset]\nname = "x"\n[cost.ipi_latency]\nvalue = 777\nsource = "a test figure"\n')
    cfg = load_config(None, [f"machine.preset='{f}'"])
    assert cfg.cost.ipi_latency == 777
    f.unlink()
    again = validate(cfg.model_dump(mode="json"))
    assert again.cost == cfg.cost


def test_relative_preset_path_is_relative_to_the_config(tmp_path):
    (tmp_path / "host.toml").write_text('[cost.invlpg]\nvalue = 99\nsource = "a test figure"\n')
    (tmp_path / "exp.toml").write_text('[machine]\npreset = "host.toml"\n')
    assert load_config(tmp_path / "exp.toml").cost.invlpg == 99


@pytest.mark.parametrize("text, says", [
    ('[cost.ipi_latency]\nvalue = 5\n', "cost.ipi_latency: needs a `source`"),
    ('[cost.warp_speed]\nvalue = 5\nsource = "x"\n', "cost.warp_speed: not a cost key"),
    ('[cost.invlpg]\nvalue = "fast"\nsource = "x"\n', "cost.invlpg: needs an integer `value`"),
    ('not toml [', "not a readable TOML preset"),
])
def test_bad_preset_is_named(tmp_path, text, says):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"machine.preset='{f}'"])
    assert says in str(e.value) and str(f) in str(e.value)


def test_unknown_preset_lists_the_builtins():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["machine.preset=pentium-9000"])
    assert "no preset 'pentium-9000'" in str(e.value) and "kvm-guest" in str(e.value)
