"""The ``gradguard`` command line."""

from __future__ import annotations

import argparse
import json
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


def _report(args: argparse.Namespace) -> int:
    from gradguard.logs import reader as analysis

    logs = analysis.load(*args.logs)
    summary = analysis.summarize(logs)
    if len(logs) == 0:
        print(
            "gradguard: no gradguard records in "
            + ", ".join(args.logs)
            + (" (" + "; ".join(logs.notes) + ")" if logs.notes else ""),
            file=sys.stderr,
        )
        return 2
    if args.plot:
        from gradguard.logs.plot import plot_differences

        try:
            written = plot_differences(logs, args.plot)
        except OSError as exc:
            print(
                f"gradguard: cannot write the plot to {args.plot}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        if not args.json:
            print(f"plot written to {written}")
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, allow_nan=False))
    else:
        print(analysis.format_summary(summary))
    return 0 if summary.passed else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="gradguard", description="Check gradients and read gradient-check logs."
    )
    parser.add_argument("--version", action="version", version=f"gradguard {gradguard.__version__}")
    commands = parser.add_subparsers(dest="command")
    plugins = commands.add_parser("plugins", help="list the registered plugins and their hooks")
    plugins.set_defaults(run=_plugins)
    report = commands.add_parser(
        "report",
        help="summarize gradient-check logs; exit 1 if any check failed, 2 if unusable",
        description=(
            "Read JSON-lines logs written by gradguard (log_file=...) and summarize them: "
            "runs, checks, failures by tensor with the first failing step, the worst difference "
            "per tensor, statuses. Exit code 0: all checks passed; 1: a check failed; "
            "2: unusable input."
        ),
    )
    report.add_argument("logs", nargs="+", metavar="LOG", help="JSON-lines log file(s)")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.add_argument("--plot", metavar="PNG", help="also draw differences over steps to PNG")
    report.set_defaults(run=_report)
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
