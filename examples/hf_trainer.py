"""The Hugging Face Trainer with gradguard's callback: a hand-written backward caught mid-training.

A tiny GPT-2 (2 layers, width 32, built from ``GPT2Config``: nothing is downloaded) is trained
on random token ids with ``transformers.Trainer``. Layer 1's MLP input projection is replaced
by a custom autograd Function, as one does to fuse or speed up a layer. Its first version has
an off-by-one in the weight gradient (it skips each sequence's first position); training
still runs and the loss still falls. ``GradCheckCallback`` checks at the first optimizer step,
names the one wrong tensor, and stops training. The fixed Function then trains with two
passing checks, after which the callback switches itself off.

Every check's figures (``gradcheck/difference``, ``gradcheck/failed``, one difference per
tensor) go into the Trainer's logs, so TensorBoard shows them (``report_to=["tensorboard"]``:
``tensorboard --logdir OUT``), and every check is a record in the JSON-lines log.

Run: ``python examples/hf_trainer.py [--log PATH] [--out DIR]`` (about half a minute on CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from typing import Any

import torch
import transformers

from gradguard_torch.transformers import GradCheckCallback


class Conv1DFunction(torch.autograd.Function):
    """GPT-2's ``Conv1D`` (``x @ W + b``) with a hand-written backward."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, buggy: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.buggy = buggy
        return x @ weight + bias

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, weight = ctx.saved_tensors
        if ctx.buggy:  # BUG: an off-by-one drops each sequence's first position
            x, grad_seen = x[:, 1:], grad[:, 1:]
        else:
            grad_seen = grad
        grad_weight = x.reshape(-1, x.shape[-1]).T @ grad_seen.reshape(-1, grad.shape[-1])
        return grad @ weight.T, grad_weight, grad.sum(dim=(0, 1)), None


class FusedConv1D(torch.nn.Module):
    def __init__(self, original: torch.nn.Module, buggy: bool) -> None:
        super().__init__()
        self.weight, self.bias, self.buggy = original.weight, original.bias, buggy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = Conv1DFunction.apply(x, self.weight, self.bias, self.buggy)
        return out


def tiny_gpt2(buggy: bool) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    mlp = model.transformer.h[1].mlp
    mlp.c_fc = FusedConv1D(mlp.c_fc, buggy)
    return model


def train(buggy: bool, out: str, log_file: str | None) -> GradCheckCallback:
    ids = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row.clone()} for row in ids]
    callback = GradCheckCallback(every=2, max_checks=2, log_file=log_file, seed=0)
    args = transformers.TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=8,
        max_steps=6,
        logging_steps=2,
        save_strategy="no",
        report_to=["tensorboard"],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=tiny_gpt2(buggy), args=args, train_dataset=data, callbacks=[callback]
    )
    trainer.remove_callback(transformers.PrinterCallback)  # the log dicts: TensorBoard has them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the table is printed below instead
        trainer.train()
    print(f"trained {trainer.state.global_step} of 6 optimizer steps")
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="JSON-lines file for the checks' records")
    parser.add_argument("--out", help="the Trainer's output dir (TensorBoard events under it)")
    options = parser.parse_args()
    transformers.logging.set_verbosity_error()
    out = options.out or tempfile.mkdtemp(prefix="hf_trainer_")

    print("== the fused Conv1D, as first written ==")
    callback = train(True, f"{out}/buggy", options.log)
    (report,) = callback.reports
    print(report)
    print(f"stopped at step {callback.stopped_at}; wrong: {', '.join(report.failed)}")

    print("\n== the fused Conv1D, fixed ==")
    callback = train(False, f"{out}/fixed", options.log)
    for index, report in enumerate(callback.reports):
        print(f"check {index}: {report.status.value}, difference {report.difference:.1e}")
    print(f"switched itself off: {not callback.active}")
    print(f"last figures: gradcheck/difference = {callback.figures['gradcheck/difference']:.1e}")
    print(f"TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    main()
