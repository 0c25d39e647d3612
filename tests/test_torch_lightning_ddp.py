"""The Lightning callback in a real 2-process DDP fit (gloo, CPU), with a hard deadline.

Only rank 0 checks; the stop (or the error) must reach every rank at the same batch, or the
other rank would wait forever in the next gradient all-reduce. ``lightning_ddp_job.py`` runs
three fits under ``torch.distributed.run``; this test bounds the whole job in time and reads
each rank's results.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

WORLD = 2
DEADLINE_S = 300
JOB = pathlib.Path(__file__).with_name("lightning_ddp_job.py")


def test_a_failing_check_stops_or_raises_on_every_rank(tmp_path: pathlib.Path) -> None:
    """stop: both ranks stop after the first (checked) batch; pass: both run to max_steps and
    switch off together; raise: both raise rank 0's GradientCheckError. Nothing hangs."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(JOB.parent), os.environ.get("PYTHONPATH", "")])
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        str(JOB),
        str(tmp_path),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the deadline kills every rank
    )
    try:
        output, _ = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the DDP job did not finish in {DEADLINE_S} s (a hang?)\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]

    def result(scenario: str, rank: int) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(
            (tmp_path / f"{scenario}-rank{rank}.json").read_text()
        )
        return loaded

    stop = [result("stop", r) for r in range(WORLD)]
    assert [s["global_step"] for s in stop] == [1, 1]  # both stopped after batch 0
    assert [s["stopped_at"] for s in stop] == [0, 0]
    assert [s["checks"] for s in stop] == [1, 0]  # rank 0 checked, rank 1 did not
    assert stop[0]["warnings"] == [
        "gradguard stopped training at step 0: the gradient check FAILED on hidden.weight, "
        "hidden.bias (on_failure='stop'; 'warn' keeps training, 'raise' makes it an error)"
    ]
    assert stop[1]["warnings"] == []

    passing = [result("pass", r) for r in range(WORLD)]
    assert [p["global_step"] for p in passing] == [10, 10]
    assert passing[0]["passed"] == [True, True] and passing[1]["checks"] == 0
    assert [p["active"] for p in passing] == [False, False]  # switched off together

    raised = [result("raise", r) for r in range(WORLD)]
    assert [r["error"] for r in raised] == [
        "GradientCheckError: ('hidden.weight', 'hidden.bias')"
    ] * 2
    assert [r["global_step"] for r in raised] == [1, 1]  # raised at the end of the first batch
    records = (tmp_path / "stop.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in records] == [0]  # one check, by rank 0
