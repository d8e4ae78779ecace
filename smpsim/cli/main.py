"""The ``smpsim`` command (console script ``smpsim = smpsim.cli.main:app``).

Each command group lives in its own module under smpsim/cli/ and is registered here; later commands
(launch, sweep, analyze, ...) follow the same pattern.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.23 ships its own copy of Click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on Click
    from click import exceptions as click_exceptions

from smpsim.version import __version__
from smpsim.cli import analyze
from smpsim.cli import bench, calibrate, config_cmd, distributed, export, keygen, policy, run, sweep
from smpsim.cli.common import EXIT_USAGE

# typer's Abort, and Click's where typer still runs on Click (typer's own copy of Click has none)
_ABORTS = (typer.Abort, *((click_exceptions.Abort,) if hasattr(click_exceptions, "Abort") else ()))


class _Group(TyperGroup):
    """The top-level group: a usage mistake (unknown command or option, missing argument, bad value) is one
    ``error: ...`` paragraph with exit code 2, not Click's usage box; bare ``smpsim`` prints the help."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(EXIT_USAGE)
        except click_exceptions.UsageError as e:
            sys.stdout.flush()
            print(f"error: {usage_message(e)}{set_without_equals(sys.argv[1:] if args is None else list(args))}",
                  file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except click_exceptions.ClickException as e:
            print(f"error: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code)
        except _ABORTS:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def usage_message(e: Any) -> str:
    """Click's message, one line, and where the usage is explained."""
    text = " ".join(e.format_message().split()).replace("Value error, ", "")  # typer's pydantic coercion
    text = text[:1].lower() + text[1:]
    where = e.ctx.command_path if e.ctx is not None else "smpsim"
    return f"{text.rstrip('.')} (`{where} --help` shows the usage)"


def set_without_equals(argv: list[str]) -> str:
    """A hint for the likely cause of a usage error: ``--set KEY VALUE`` (the value became an extra argument)."""
    for flag, key, after in zip(argv, argv[1:], [*argv[2:], None]):
        if flag in ("--set", "-s") and "=" not in key:
            value = after if after is not None and not after.startswith("-") else "VALUE"
            return f"; --set {key} has no '=': write --set {key}={value}"
    return ""


def _one_line_warnings() -> None:
    """A library's Python warning (a truncated run read somewhere) as the CLI's one ``warning:`` line, never
    Python's ``file:line: Category: ...`` format."""
    import warnings

    from smpsim.cli.common import warn

    warnings.showwarning = lambda message, *args, **kwargs: warn(str(message))


_one_line_warnings()

app = typer.Typer(
    cls=_Group,
    name="smpsim",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Simulate the Linux pkmap ring and per-CPU TLBs: what the lazy flush on ring wrap saves.",
)


def _version(value: bool) -> None:
    if value:
        from smpsim import native
        how = native.path()
        model = "compiled with mypyc" if how["path"] == "compiled" else f"pure Python: {how['why']}"
        typer.echo(f"smpsim {__version__} (model {model})")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """smpsim: the pkmap ring, kmap_lock, per-CPU TLBs and TLB shootdowns, in virtual cycles."""
    from smpsim.engines.distributed import sockdir
    sockdir.clean_orphans()  # what a launch killed outright (SIGKILL) left in the temporary directory


app.command("run")(run.run)
app.command("export")(export.export)
app.command("analyze")(analyze.analyze)
app.command("compare")(analyze.compare)
app.command("query")(analyze.query)
app.command("launch")(distributed.launch)
app.command("coordinator")(distributed.coordinator)
app.command("cpu")(distributed.cpu)
app.command("keygen")(keygen.keygen)
app.command("bench")(bench.bench)
app.command("sweep")(sweep.sweep)
app.command("calibrate")(calibrate.calibrate)
app.add_typer(config_cmd.app, name="config")
app.add_typer(policy.app, name="policy")


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="smpsim")
