"""The ``gradguard`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import gradguard
from gradguard.errors import GradGuardError

__all__ = ["main"]


def _plugins(_: argparse.Namespace) -> int:
    manager = gradguard.get_plugin_manager()
    for name, plugin in sorted(manager.list_name_plugin()):
        hooks = sorted(
            caller.name for caller in manager.get_hookcallers(plugin) or () if caller.name
        )
        print(
            f"{name:<18} {getattr(plugin, '__name__', type(plugin).__name__):<28} "
            f"{', '.join(hooks)}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="gradguard", description="Check gradients and read gradient-check logs."
    )
    parser.add_argument("--version", action="version", version=f"gradguard {gradguard.__version__}")
    commands = parser.add_subparsers(dest="command")
    plugins = commands.add_parser("plugins", help="list the registered plugins and their hooks")
    plugins.set_defaults(run=_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for unusable input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except GradGuardError as exc:
        print(f"gradguard: {exc}", file=sys.stderr)
        return 2
