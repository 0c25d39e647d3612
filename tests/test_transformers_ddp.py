"""The Hugging Face Trainer callback in a real 2-process DDP run (gloo, CPU), with a hard deadline.

Only rank 0 checks; the stop (or the error) must reach every rank at the same optimizer step, or
the other rank would wait forever in the next gradient all-reduce. ``transformers_ddp_job.py``
runs two trainings under ``torch.distributed.run``; this test bounds the whole job in time and
reads each rank's results.
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
pytest.importorskip("transformers")

WORLD = 2
DEADLINE_S = 400
JOB = pathlib.Path(__file__).with_name("transformers_ddp_job.py")


def test_a_failing_check_stops_or_raises_every_rank_of_a_trainer(tmp_path: pathlib.Path) -> None:
    """stop: both ranks stop after optimizer step 0, which rank 0 checked; raise: both raise
    rank 0's GradientCheckError naming the wrong tensor. Nothing hangs."""
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
    assert [s["world"] for s in stop] == [WORLD, WORLD]
    assert [s["global_step"] for s in stop] == [1, 1]  # both stopped after optimizer step 0
    assert [s["stopped_at"] for s in stop] == [0, 0]
    assert [s["checks"] for s in stop] == [1, 0]  # rank 0 checked, rank 1 did not
    assert stop[0]["warnings"] == [
        "gradguard stopped training at step 0: the gradient check FAILED on "
        "transformer.h.1.mlp.c_fc.weight (on_failure='stop'; 'warn' keeps training, 'raise' "
        "makes it an error)"
    ]
    assert stop[1]["warnings"] == []
    raised = [result("raise", r) for r in range(WORLD)]
    assert [r["error"] for r in raised] == [
        "GradientCheckError: ('transformer.h.1.mlp.c_fc.weight',)"
    ] * WORLD
    assert [r["global_step"] for r in raised] == [0, 0]
