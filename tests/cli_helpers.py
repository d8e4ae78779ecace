"""Driving the CLI in-process from tests: no traceback ever, and user errors as one `error:` paragraph."""

from __future__ import annotations

from typer.testing import CliRunner

from smpsim.cli.main import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), result.exception
    return result


def user_error(result, code=2):
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ")
    assert "\n\n" not in result.stderr.strip()  # one paragraph
    return result.stderr
