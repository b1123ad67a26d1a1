"""Shared helpers for the malformed-input suite: run the CLI in-process and return its one error line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from alignloop.cli import app


@pytest.fixture
def cli_error():
    """``cli_error(*argv)`` runs ``alignloop *argv`` and returns the error message (the text after ``error:``),
    failing the test if the command succeeded, printed a traceback, or said more than one line."""
    runner = CliRunner()

    def run(*argv: str) -> str:
        result = runner.invoke(app, [str(a) for a in argv])
        output = result.output
        assert result.exit_code != 0, f"expected a failure, got exit 0:\n{output}"
        assert "Traceback" not in output, output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        lines = [line for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1, output
        return errors[0].removeprefix("error:").strip()

    return run
