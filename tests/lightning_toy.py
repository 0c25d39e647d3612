"""A small LightningModule whose backward can be made wrong, for the Lightning callback tests.

Shared by ``test_torch_lightning.py`` and the 2-process DDP job ``lightning_ddp_job.py``.
"""

from __future__ import annotations

from typing import Any

import lightning
import torch
import torch.nn.functional as F
from torch import nn


class Scaled(torch.autograd.Function):
    """y = 2x, whose backward is wrong by a factor (1 + error)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, error: float) -> torch.Tensor:
        ctx.error = error
        return 2.0 * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return 2.0 * (1.0 + ctx.error) * grad, None


class Regressor(lightning.LightningModule):  # type: ignore[misc]
    def __init__(self, error: float = 0.0) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 1)
        self.error = error
        self.probe: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(Scaled.apply(torch.tanh(self.hidden(x)), self.error))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        if batch is self.probe:
            self.log("probe_was_logged", 1.0)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(64, 4, generator=generator), torch.randn(64, 1, generator=generator)
