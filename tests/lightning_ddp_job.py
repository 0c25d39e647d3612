"""One rank of the 2-process DDP Lightning job that ``test_torch_lightning_ddp.py`` launches.

Run by ``torch.distributed.run`` (torchrun), which sets each process's rank; Lightning's DDP
strategy then joins the gloo process group instead of launching processes itself. Three fits
in one process group, each result written to ``OUT/<scenario>-rank<r>.json``:

- ``stop``: a wrong backward, ``on_failure="stop"`` (the default): every rank stops at the
  first checked batch, although only rank 0 checks.
- ``pass``: a right backward, ``max_checks=2``: rank 0 switches off after two passes and the
  other rank stops taking part at the same step; the fit runs to ``max_steps``.
- ``raise``: a wrong backward, ``on_failure="raise"``: every rank raises rank 0's
  ``GradientCheckError`` out of ``fit`` (none waits in a collective).

Usage: ``python -m torch.distributed.run --standalone --nproc-per-node 2 lightning_ddp_job.py OUT``
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings
from typing import Any

import lightning
import torch
import torch.nn.functional as F
from lightning_toy import Regressor, data
from torch.utils.data import DataLoader, TensorDataset

import gradguard as gg
from gradguard_torch.lightning import GradCheckCallback


def fit(scenario: str, error: float, out: pathlib.Path, **options: Any) -> None:
    torch.manual_seed(0)  # the same initial weights on every rank
    module = Regressor(error)
    x, y = data()
    callback = GradCheckCallback(
        lambda m: F.mse_loss(m(x[:16]), y[:16]),
        every=2,
        seed=1,
        log_file=str(out / f"{scenario}.jsonl"),
        **options,
    )
    trainer = lightning.Trainer(
        callbacks=[callback],
        max_steps=10,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    error_text = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gg.GradientCheckWarning)
        try:
            trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
        except gg.GradientCheckError as exc:
            error_text = f"{type(exc).__name__}: {exc.report.failed}"
    rank = trainer.global_rank
    result = {
        "global_step": trainer.global_step,
        "checks": len(callback.reports),
        "passed": [r.passed for r in callback.reports],
        "active": callback.active,
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
    fit("stop", 0.01, out)
    fit("pass", 0.0, out, max_checks=2)
    fit("raise", 0.01, out, on_failure="raise")


if __name__ == "__main__":
    main()
