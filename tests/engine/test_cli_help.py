"""Every subcommand's ``--help`` renders: it is where a new user starts."""

from __future__ import annotations

import contextlib
import io

import pytest

from engine.cli import command_table, main


@pytest.mark.parametrize("command", sorted(command_table()))
def test_every_command_has_a_help_page(command: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert out.getvalue().startswith(f"usage: simpersona {command}")
