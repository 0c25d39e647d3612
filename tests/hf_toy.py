"""A tiny GPT-2 (2 layers, width 32, from ``GPT2Config``: no downloads) whose layer-1 MLP input
projection can be a custom autograd Function with a planted bug, and token data made in memory.

Shared by ``test_transformers_callback.py`` and the 2-process DDP job ``transformers_ddp_job.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

VOCAB, LENGTH = 64, 16


class Conv1DFunction(torch.autograd.Function):
    """GPT-2's ``Conv1D`` (``x @ W + b``) with a hand-written backward.

    ``buggy``: the weight gradient leaves out each sequence's first position (an off-by-one in
    a sequence mask). The input and bias gradients stay right, so only the weight is wrong.
    """

    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any, buggy: bool) -> Any:
        ctx.save_for_backward(x, weight)
        ctx.buggy = buggy
        return x @ weight + bias

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        x, weight = ctx.saved_tensors
        seen_x, seen_grad = (x[:, 1:], grad[:, 1:]) if ctx.buggy else (x, grad)
        grad_weight = seen_x.reshape(-1, x.shape[-1]).T @ seen_grad.reshape(-1, grad.shape[-1])
        return grad @ weight.T, grad_weight, grad.sum(dim=(0, 1)), None


class CustomConv1D(torch.nn.Module):
    """Takes the place of a ``Conv1D``, with its parameters."""

    def __init__(self, original: torch.nn.Module, buggy: bool) -> None:
        super().__init__()
        self.weight, self.bias, self.buggy = original.weight, original.bias, buggy

    def forward(self, x: Any) -> Any:
        return Conv1DFunction.apply(x, self.weight, self.bias, self.buggy)


def model(buggy: bool | None = None, dropout: float = 0.1) -> Any:
    """A 2-layer GPT-2 of width 32; ``buggy`` not None: a custom Function in layer 1's MLP."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=LENGTH,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    model = transformers.GPT2LMHeadModel(config)
    if buggy is not None:
        mlp = model.transformer.h[1].mlp
        mlp.c_fc = CustomConv1D(mlp.c_fc, buggy)
    return model


def data(count: int = 32) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (count, LENGTH), generator=generator)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]
