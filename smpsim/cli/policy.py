"""``smpsim policy check SPEC``: search for a stale use, a kernel BUG or a deadlock of a flush policy
(smpsim.check); exit 0 safe, 1 unsafe, 2 a usage mistake."""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import EXIT_RUN_FAILED, EXIT_USAGE, console, fail, handle_errors
from smpsim.cli.config_cmd import SetOpt

app = typer.Typer(no_args_is_help=True, help="Check a flush policy.")


def default_out(policy: str, seed: int) -> Path:
    """counterexamples/<the policy's name>-seed<N>: a spec's class name, or the built-in name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", policy.rpartition(":")[2]).strip("-.") or "policy"
    return Path("counterexamples") / f"{name}-seed{seed}"


@app.command("check")
@handle_errors
def check(
    spec: Annotated[str, typer.Argument(
        metavar="SPEC", help="the policy, as policy.name takes it: a built-in name, 'package.module:Class' or "
                             "'path/to/file.py:Class'", show_default=False)],
    seed: Annotated[int, typer.Option("--seed", help="seed of the generated workloads: the same seed, the "
                                                     "same verdict and counterexample")] = 1,
    budget: Annotated[float, typer.Option("--budget", metavar="SECONDS",
                                          help="time for the generated workloads (the fixed cases come "
                                               "first and take about 10 s more)")] = 60.0,
    workloads: Annotated[Optional[int], typer.Option(
        "--workloads", metavar="M", help="at most M generated workloads (with a generous --budget: a search "
                                         "that does not depend on the machine's speed)", show_default=False)] = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="where a counterexample goes (default: counterexamples/<policy>-seed<N>)",
        show_default=False)] = None,
) -> None:
    """Run a flush policy on cases chosen to break unsafe policies, then on generated script workloads, and
    shrink the first failure to a minimal script that `smpsim run` replays."""
    from smpsim.check import check_policy, counterexample_problem
    from smpsim.extras import need

    need("hypothesis")
    if budget <= 0:
        fail(f"--budget {budget:g}: give the seconds the search may take, more than 0", EXIT_USAGE)
    if workloads is not None and workloads < 1:
        fail(f"--workloads {workloads}: give how many generated workloads to try, 1 or more", EXIT_USAGE)
    if seed < 0:
        fail(f"--seed {seed}: give a seed of 0 or more", EXIT_USAGE)
    out = out if out is not None else default_out(spec, seed)
    problem = counterexample_problem(out)
    if problem:
        fail(problem, EXIT_USAGE)

    con = console()
    status = con.status("checking") if con is not None else nullcontext()
    with status as s:
        verdict = check_policy(spec, seed=seed, budget=budget, workloads=workloads, overrides=set_ or (),
                               progress=(lambda what: s.update(f"checking {spec}: {what}")) if s else (lambda w: None))
    def say(text: str) -> None:
        if con is not None:
            con.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(text)

    if verdict.safe:
        say(f"{spec}: safe on {verdict.cases} cases and {verdict.generated:,} generated workloads "
            f"(seed {seed}, {verdict.seconds:.0f} s)")
        say(verdict.cost)
        return
    f = verdict.failure
    assert f is not None
    say(f"{spec}: UNSAFE: {f.kind} in {f.where}: {f.message}")
    for line in f.explanation:
        say(f"  {line}")
    config, script = verdict.write(out)
    if script is not None:
        say(f"counterexample: {script} ({len(f.script or ())} operations)")
    say(f"replay: smpsim run {config}")
    raise typer.Exit(EXIT_RUN_FAILED)
