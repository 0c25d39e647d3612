"""One rank of the 2-process DDP Trainer job that ``test_transformers_ddp.py`` launches.

Run by ``torch.distributed.run``, which sets each process's rank; the Trainer (through
accelerate) joins the gloo process group. Two runs of the tiny GPT-2 with the planted weight
gradient bug, each result written to ``OUT/<scenario>-rank<r>.json``:

- ``stop``: ``on_failure="stop"`` (the default): every rank stops after the first optimizer
  step, although only rank 0 checks.
- ``raise``: every rank raises rank 0's ``GradientCheckError`` out of ``train()``.

Usage:
``python -m torch.distributed.run --standalone --nproc-per-node 2 transformers_ddp_job.py OUT``
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

import torch
import transformers
from hf_toy import data, model

import gradguard as gg
from gradguard_torch.transformers import GradCheckCallback

CHECKED = ["transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias"]


def train(scenario: str, out: pathlib.Path) -> None:
    # Two tensors, for speed: the agreement between ranks is what is tested here.
    callback = GradCheckCallback(
        every=2,
        seed=1,
        on_failure=scenario,
        tensors=CHECKED,  # type: ignore[arg-type]
    )
    args = transformers.TrainingArguments(
        output_dir=str(out / scenario),
        per_device_train_batch_size=4,
        max_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model(buggy=True, dropout=0.0), args=args, train_dataset=data(), callbacks=[callback]
    )
    error_text = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gg.GradientCheckWarning)
        try:
            trainer.train()
        except gg.GradientCheckError as exc:
            error_text = f"{type(exc).__name__}: {exc.report.failed}"
    rank = torch.distributed.get_rank()
    result = {
        "world": torch.distributed.get_world_size(),
        "global_step": trainer.state.global_step,
        "checks": len(callback.reports),
        "stopped_at": callback.stopped_at,
        "error": error_text,
        "warnings": [
            str(w.message).splitlines()[0]
            for w in caught
            if issubclass(w.category, gg.GradientCheckWarning)
        ],
    }
    (out / f"{scenario}-rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    train("stop", out)
    train("raise", out)
    # Leave together: a rank that exits while its peer still holds the gloo connection can
    # be aborted by gloo's teardown (exit code -6, seen once in a full suite under load).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
