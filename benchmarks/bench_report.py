"""What ``gradguard report`` costs on a large log: peak memory and time, against the file's size.

The report streams (one line at a time, every record validated against the shipped schema),
so its memory should be that of the interpreter plus the summary, whatever the file's size.
Measured here on a generated log of real records (a few runs of a guard checking a 4-tensor
model, one record per step, a garbage line every 1,000 records), written to a temporary
directory and deleted afterwards:

- ``gradguard report LOG`` in a child process: wall time, throughput, peak resident memory
  (``ru_maxrss`` of the child);
- ``gradguard report LOG --plot out.png``: the same with the plot's bounded collector;
- the same command on a log of a single record: the interpreter's and imports' own memory,
  the floor every run pays.

Run: ``python benchmarks/bench_report.py [--size-mb 1024] [--quick]``. Results:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import gradguard as gg
from gradguard.logs.records import check_record


def _template() -> dict[str, object]:
    rng = np.random.default_rng(0)
    params = {name: rng.normal(size=shape) for name, shape in
              [("fc1.weight", (16, 8)), ("fc1.bias", (16,)), ("fc2.weight", (4, 16)),
               ("fc2.bias", (4,))]}  # fmt: skip

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(sum(np.sum(v**2) for v in p.values()))

    report = gg.check(loss, params, lambda p: {k: 2 * v for k, v in p.items()}, seed=0)
    return check_record(report, gg.CheckContext(source="guard", run_id="run-0", step=0))


def write_log(path: str, size_bytes: int) -> tuple[int, int]:
    """Write about ``size_bytes`` of records; returns (records, bytes written)."""
    template = _template()
    records = written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < size_bytes:
            run = records // 200_000
            chunk = []
            for _ in range(1000):
                template["run_id"], template["step"] = f"run-{run}", records
                chunk.append(json.dumps(template, separators=(",", ":")))
                records += 1
            chunk.append("a garbage line from another tool, not JSON")
            text = "\n".join(chunk) + "\n"
            handle.write(text)
            written += len(text)
    return records, written


def run_report(*args: str) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS in MiB, exit code) of ``gradguard report ARGS`` in a child.

    CPU time (user + system) is given next to wall time: on a shared machine the wall time
    also counts waiting for a core.
    """
    script = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "wall = time.perf_counter() - start\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, sys.executable, "-m", "gradguard", "report", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]) / 1024, int(out[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="log size (default 1 GiB)")
    parser.add_argument("--quick", action="store_true", help="a 20 MB log (a smoke test)")
    args = parser.parse_args()
    size = (20 if args.quick else args.size_mb) * 2**20
    directory = tempfile.mkdtemp(prefix="gradguard-bench-report-")
    try:
        log = os.path.join(directory, "big.jsonl")
        tiny = os.path.join(directory, "tiny.jsonl")
        start = time.perf_counter()
        records, written = write_log(log, size)
        generated = time.perf_counter() - start
        with open(log, encoding="utf-8") as source, open(tiny, "w", encoding="utf-8") as out:
            out.write(source.readline())
        floor_wall, floor_cpu, floor_rss, _ = run_report(tiny)
        wall, cpu, rss, code = run_report(log)
        plot = os.path.join(directory, "p.png")
        plot_wall, plot_cpu, plot_rss, plot_code = run_report(log, "--plot", plot)
    finally:
        shutil.rmtree(directory)
    mib = written / 2**20
    print(f"# gradguard report on a {mib:,.0f} MiB log\n")
    print(
        f"{datetime.date.today()}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {records:,} records of 4 tensors "
        f"({written / records:,.0f} bytes each) and {records // 1000:,} garbage lines, "
        f"generated in {generated:.0f} s, deleted afterwards.\n"
    )
    print(
        "| command | exit | wall time | CPU time | MiB per CPU second | peak RSS "
        "| RSS / floor | RSS / file size |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = [
        ("report, 1-record log (the floor)", floor_wall, floor_cpu, floor_rss, 0, None),
        (f"report, {mib:,.0f} MiB log", wall, cpu, rss, code, mib),
        (f"report --plot, {mib:,.0f} MiB log", plot_wall, plot_cpu, plot_rss, plot_code, mib),
    ]
    for name, seconds, cpu_s, peak, exit_code, size_mib in rows:
        speed = "-" if size_mib is None else f"{size_mib / cpu_s:,.1f}"
        per_file = "-" if size_mib is None else f"{peak / size_mib:.3f}"
        print(
            f"| {name} | {exit_code} | {seconds:,.1f} s | {cpu_s:,.1f} s | {speed} | "
            f"{peak:,.0f} MiB | {peak / floor_rss:.2f} | {per_file} |"
        )
    assert code == plot_code == 0, "the generated log's checks all pass"
    print(
        f"\nPeak resident memory on the {mib:,.0f} MiB log over the 1-record log: "
        f"{rss / floor_rss:.2f}x ({round(rss - floor_rss) or 0:+,d} MiB)."
    )


if __name__ == "__main__":
    main()
