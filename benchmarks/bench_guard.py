"""What a Guard costs a training loop when it is not checking.

The point of self-disabling is that real training pays nothing. Measured here, per call of
``guard.step()``, with ``timeit`` over a million calls, median of 7 repeats:

- a guard that switched itself off (``max_checks`` reached), or was disabled by
  ``GRADGUARD_DISABLE=1``;
- an active guard on a step that is not due (``every=10**9``);
- next to a call of an empty Python function, the smallest cost any per-step hook can have.

Run: ``python benchmarks/bench_guard.py [--quick]``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform

import numpy as np
from _common import per_call_ns

import gradguard as gg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke test)")
    args = parser.parse_args()
    number, repeat = (20_000, 3) if args.quick else (1_000_000, 7)

    params = {"w": np.ones(3)}
    loss, grad = (lambda p: float(np.sum(p["w"] ** 2))), (lambda p: {"w": 2 * p["w"]})
    switched_off = gg.Guard(loss, params, grad, every=1, max_checks=1)
    switched_off.step()
    assert not switched_off.active
    not_due = gg.Guard(loss, params, grad, every=10**9, start=10**9)

    def empty() -> None:
        return None

    rows = [
        ("empty Python function call", per_call_ns(empty, number, repeat)),
        ("guard.step(), guard switched off", per_call_ns(switched_off.step, number, repeat)),
        ("guard.step(), active, step not due", per_call_ns(not_due.step, number, repeat)),
    ]
    print("# Guard per-step cost\n")
    print(f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"- Python {platform.python_version()}, gradguard {gg.__version__}")
    print(f"- {number:,} calls per repeat, median of {repeat} repeats\n")
    print("| call | ns per call |")
    print("|---|---:|")
    for name, ns in rows:
        print(f"| {name} | {ns:.0f} |")


if __name__ == "__main__":
    main()
