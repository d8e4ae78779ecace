"""`python -m smpsim` is the `smpsim` command."""

from smpsim.cli.main import app

app(prog_name="smpsim")
