"""``smpsim config show|check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import handle_errors
from smpsim.config import ConfigError, load_config, to_toml

app = typer.Typer(no_args_is_help=True, help="Show or check a run configuration.")

ConfigArg = Annotated[Optional[Path], typer.Argument(
    help="TOML config file (default: configs/default.toml)", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="override a key, e.g. --set machine.cpus=8 (repeatable)")]


@app.command("show")
@handle_errors
def show(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the resolved config (every default filled in) as TOML."""
    cfg = load_config(config, set_ or ())
    typer.echo(to_toml(cfg), nl=False)


@app.command("check")
@handle_errors
def check(config: Annotated[Path, typer.Argument(help="TOML config file to validate")],
          set_: SetOpt = None) -> None:
    """Validate a config file: print ``ok``, or every problem (exit 2)."""
    cfg = load_config(config, set_ or ())
    script = cfg.script_path()
    if cfg.workload.kind == "script" and script is not None and not script.is_file():
        raise ConfigError(str(config), [f"workload.script: file not found ({script})"])
    typer.echo("ok")
