"""The PyTorch Lightning callback, with a real Trainer on CPU."""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
lightning = pytest.importorskip("lightning")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import gradguard as gg  # noqa: E402
from gradguard_torch.lightning import GradCheckCallback  # noqa: E402


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


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(64, 4, generator=generator), torch.randn(64, 1, generator=generator)


def _fit(module: Regressor, callbacks: list[Any], steps: int = 12) -> Any:
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    trainer = lightning.Trainer(
        callbacks=callbacks,
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(module, loader)
    return trainer


def _module(error: float = 0.0) -> Regressor:
    torch.manual_seed(0)
    return Regressor(error)


def test_checks_then_switches_off_and_logs(tmp_path: pathlib.Path) -> None:
    """Checks every 3 batches, passes, switches off after 2, logs with source 'lightning'."""
    x, y = _data()
    log = tmp_path / "lightning.jsonl"
    callback = GradCheckCallback(
        lambda m: F.mse_loss(m(x[:16]), y[:16]), every=3, max_checks=2, log_file=str(log), seed=1
    )
    _fit(_module(), [callback])
    assert [r.passed for r in callback.reports] == [True, True]
    assert not callback.active
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["event"], r["source"], r["step"]) for r in records] == [
        ("gradcheck", "lightning", 0),
        ("gradcheck", "lightning", 3),
        ("guard_disabled", "lightning", 3),
    ]


def test_training_with_the_callback_is_bit_identical() -> None:
    """The weights after fit are the same bits with the callback checking as without it."""
    x, y = _data()
    checked, plain = _module(), _module()
    callback = GradCheckCallback(
        lambda m: F.mse_loss(m(x[:16]), y[:16]), every=2, max_checks=None, seed=2
    )
    _fit(checked, [callback])
    _fit(plain, [])
    assert len(callback.reports) == 6
    for (name, a), (_, b) in zip(
        checked.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_stop_ends_a_buggy_run_gracefully_and_names_the_tensors() -> None:
    """on_failure='stop' sets trainer.should_stop at the first failing check."""
    x, y = _data()
    callback = GradCheckCallback(
        lambda m: F.mse_loss(m(x[:16]), y[:16]), every=4, on_failure="stop", seed=3
    )
    trainer = _fit(_module(error=0.01), [callback])
    assert trainer.global_step == 1  # stopped after the first batch, which was checked
    assert callback.reports[0].failed == ("hidden.weight", "hidden.bias")


def test_raise_propagates_out_of_fit() -> None:
    """on_failure='raise' raises GradientCheckError out of trainer.fit."""
    x, y = _data()
    callback = GradCheckCallback(lambda m: F.mse_loss(m(x), y), every=1, on_failure="raise")
    with pytest.raises(gg.GradientCheckError, match=r"hidden\.weight"):
        _fit(_module(error=0.01), [callback])


def test_probe_batch_uses_training_step_without_polluting_the_logs() -> None:
    """probe=batch runs training_step on it; its self.log calls never reach the trainer."""
    module = _module()
    x, y = _data()
    module.probe = (x[:8], y[:8])
    callback = GradCheckCallback(probe=module.probe, every=2, max_checks=2, seed=4)
    trainer = _fit(module, [callback])
    assert [r.passed for r in callback.reports] == [True, True]
    assert "probe_was_logged" not in trainer.callback_metrics
    assert "train_loss" in trainer.callback_metrics


def test_one_instance_serves_two_fits() -> None:
    """State is reset at each fit's start: the second fit checks afresh."""
    x, y = _data()
    callback = GradCheckCallback(lambda m: F.mse_loss(m(x), y), every=2, max_checks=1, seed=5)
    _fit(_module(), [callback])
    first = callback.reports
    _fit(_module(), [callback])
    assert len(first) == 1 and len(callback.reports) == 1
    assert callback.reports[0] is not first[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs a loss"),
        ({"loss": lambda m: m, "probe": (1, 2)}, "one of the two"),
        ({"loss": lambda m: m, "on_failure": "halt"}, "on_failure"),
        ({"loss": lambda m: m, "every": 0}, "every"),
        ({"loss": lambda m: m, "eps": -1.0}, "eps"),
    ],
)
def test_bad_options_raise_at_construction(kwargs: dict[str, Any], match: str) -> None:
    """Bad configuration fails when the callback is built, before any training."""
    with pytest.raises(gg.SettingsError, match=match):
        GradCheckCallback(**kwargs)
