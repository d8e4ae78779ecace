"""configs/scaling.toml and the workload keys that scale with the CPU count (kmaps_total, think_per_cpu).

The full experiment (200 runs) is not run here: `config check` validates it, and a scaled-down copy runs.
"""

from pathlib import Path

import pytest

from smpsim import api
from smpsim.config import ConfigError, load_config, to_toml, validate
from smpsim.experiments.sweep import load_experiment
from cli_helpers import invoke

SCALING = Path(__file__).resolve().parents[1] / "configs" / "scaling.toml"


def test_scaling_toml_checks_and_keeps_work_and_lock_load_per_cpu_count():
    r = invoke("config", "check", SCALING)
    assert r.exit_code == 0 and r.stdout.strip() == "ok: a sweep of 40 points x 5 seeds (200 runs)"
    exp = load_experiment(SCALING)
    assert {p.params["policy.name"] for p in exp.points} == {"linux-2.4", "linux-2.6", "tlb-gen", "vmap-lazy",
                                                             "eager"}
    assert sorted({p.params["machine.cpus"] for p in exp.points}) == [2, 4, 8, 16, 32, 64, 128, 256]
    for p in exp.points:
        n, w = p.cfg.machine.cpus, p.cfg.workload
        assert w.kmaps_per_cpu * n == 8192 and w.think == 1_000_000 * n


def test_the_keys_default_to_todays_behaviour_and_must_agree_when_both_given():
    cfg = load_config(None)
    assert cfg.workload.kmaps_total is None and cfg.workload.think_per_cpu is None
    assert "think_per_cpu" not in to_toml(cfg) and "kmaps_total" not in to_toml(cfg)  # config hashes as before
    scaled = validate({"machine": {"cpus": 4}, "workload": {"kmaps_total": 10, "think_per_cpu": 7}})
    assert (scaled.workload.kmaps_per_cpu, scaled.workload.think) == (2, 28)
    assert validate({"machine": {"cpus": 4}, "workload": {"think": 28, "think_per_cpu": 7}}).workload.think == 28
    with pytest.raises(ConfigError) as e:
        validate({"machine": {"cpus": 4}, "workload": {"think": 5, "think_per_cpu": 7}})
    assert "workload.think = 5 disagrees with workload.think_per_cpu (which makes it 28 at machine.cpus = 4)" \
        in str(e.value) and "give one of the two" in str(e.value)


def test_a_scaled_down_copy_offers_kmap_lock_the_same_small_load_at_each_size(tmp_path):
    done = api.run_sweep(SCALING, ["workload.kmaps_total=256", "sweep.machine.cpus=[2, 16]",
                                   'sweep.policy.name=["linux-2.4"]', "sweep.seeds=2"], out=tmp_path, jobs=1)
    assert [r["status"] for r in done.rows] == ["ok", "ok"] and [r["seeds"] for r in done.rows] == [2, 2]
    small, large = (r["lock_utilisation"] for r in done.rows)
    assert 0 < small < 0.01 and 0 < large < 0.01 and 0.5 < large / small < 2  # h / think_per_cpu, about 0.03%
    assert all(r["confounders"] == "" for r in done.rows)
