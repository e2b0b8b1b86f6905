"""Subcommands of the `simpersona` CLI, discovered by engine.cli."""
