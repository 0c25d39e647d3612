"""The ``gradguard`` command line."""

from __future__ import annotations

import argparse
import json
import os
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
    from gradguard.logs import reader

    plot = None
    if args.plot:  # a bad plot path is found before any log is read
        from gradguard.logs.plot import PlotData, plot_target, write_plot

        target, fmt = plot_target(args.plot)
        plot = PlotData()
    summary, records = reader.summarize_files(*args.logs, also=[plot] if plot else [])
    if records == 0:
        print(
            "gradguard: no gradguard records in "
            + ", ".join(args.logs)
            + (" (" + "; ".join(summary.notes) + ")" if summary.notes else ""),
            file=sys.stderr,
        )
        return 2
    if plot is not None:
        try:
            write_plot(plot.render(fmt), target)
        except OSError as exc:
            print(
                f"gradguard: cannot write the plot to {target}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        if not args.json:
            _print(f"plot written to {target}")
    if args.json:
        _print(json.dumps(summary.to_dict(), indent=2, allow_nan=False))
    else:
        _print(reader.format_summary(summary))
    return summary.exit_code


def _print(text: str) -> None:
    """Print to stdout; a reader that went away (``| head``) does not change the exit code."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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
        help="summarize gradient-check logs; exit 1 if a check failed or was inconclusive, "
        "2 if unusable",
        description=(
            "Read JSON-lines logs written by gradguard (log_file=..., pytest --gradguard-log) "
            "and summarize them: runs, tests, checks, failures by tensor with the first failing "
            "step, the worst difference per tensor, statuses. Lines that are not valid records "
            "are skipped and counted. Exit code 0: every check passed; 1: a valid record shows "
            "a check that failed or was inconclusive; 2: unusable input (a file that cannot be "
            "read or holds no gradguard record, a plot that cannot be written)."
        ),
    )
    report.add_argument(
        "logs", nargs="+", metavar="LOG", help="JSON-lines log file(s); - reads standard input"
    )
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the differences over steps (per test for pytest runs) to FILE "
        "(.png, .svg or .pdf)",
    )
    report.set_defaults(run=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    ``gradguard report``: 0 when every check in the logs passed, 1 when a valid record shows a
    check that failed or was inconclusive, 2 on unusable input (a log that cannot be read or
    holds no gradguard record, a plot path that cannot be written), 130 on Ctrl-C.
    """
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
    except KeyboardInterrupt:
        print("gradguard: interrupted", file=sys.stderr)
        return 130
