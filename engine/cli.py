"""The ``simpersona`` command line: one subcommand per module in ``engine/commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
they are discovered here, so adding a command never edits this file. ``NAME`` and ``HELP`` are read
from the module source, and only the chosen command is imported: the others pull in torch and Ray,
which would cost every invocation many seconds.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import commands

DESCRIPTION = """\
SimPersona: learn discrete buyer personas from raw clickstreams and simulate buyer populations.

Typical flow:
  simpersona synth --out raw/ --buyers 5000 --merchants 12      # or bring your own logs
  simpersona prepare raw/logs --mapping raw/mapping.yaml --out data/
  simpersona inspect data/
Run `simpersona COMMAND --help` for each command's options.
"""

VERBOSE_HELP = "also show Ray's own logs on the console (they always go to ray.log in the run directory)"


def command_table() -> dict[str, tuple[str, str]]:
    """Command name -> (module name, one-line help), read from the command modules' source."""
    table = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        source = Path(commands.__path__[0], f"{info.name}.py").read_text(encoding="utf-8")
        constants = {
            target.id: node.value.value
            for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        table[constants["NAME"]] = (info.name, constants["HELP"])
    return table


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``chosen`` (or, when None, every command) gets its full arguments."""
    parser = argparse.ArgumentParser(
        prog="simpersona", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in command_table().items():
        cmd = sub.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        # Also accepted after the command name; SUPPRESS keeps an absent one from resetting the
        # value given before it.
        cmd.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        if chosen is None or name == chosen:
            module = importlib.import_module(f"engine.commands.{module_name}")
            cmd.description = (module.__doc__ or help_text).strip()
            module.add_arguments(cmd)
            cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in command_table() else "")
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # User-facing input errors: the message already names the file/column and the fix.
        print(f"simpersona {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`simpersona inspect data/ | head`): no traceback, and none at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
