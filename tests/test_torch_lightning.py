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
from lightning_toy import Regressor, data  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import gradguard as gg  # noqa: E402
from gradguard_torch.lightning import GradCheckCallback  # noqa: E402


def _fit(
    module: Regressor,
    callbacks: list[Any],
    steps: int = 12,
    *,
    root: pathlib.Path | None = None,
    ckpt_path: pathlib.Path | None = None,
) -> Any:
    x, y = data()
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
        default_root_dir=root,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended.*")
        trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def _module(error: float = 0.0) -> Regressor:
    torch.manual_seed(0)
    return Regressor(error)


def test_checks_then_switches_off_and_logs(tmp_path: pathlib.Path) -> None:
    """Checks every 3 batches, passes, switches off after 2, logs with source 'lightning'."""
    x, y = data()
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
    x, y = data()
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


def test_stop_is_the_default_and_says_why() -> None:
    """By default a failing check stops the fit after that batch, with a GradientCheckWarning
    that says gradguard stopped training, at which step, and shows the table."""
    x, y = data()
    callback = GradCheckCallback(lambda m: F.mse_loss(m(x[:16]), y[:16]), every=4, seed=3)
    assert callback.on_failure == gg.policy.DEFAULT_ON_FAILURE == "stop"
    with pytest.warns(gg.GradientCheckWarning) as warned:
        trainer = _fit(_module(error=0.01), [callback])
    assert trainer.global_step == 1  # stopped after the first batch, which was checked
    assert callback.reports[0].failed == ("hidden.weight", "hidden.bias")
    assert callback.stopped_at == 0 and not callback.active
    messages = [str(w.message) for w in warned if issubclass(w.category, gg.GradientCheckWarning)]
    assert len(messages) == 1
    assert messages[0].startswith(
        "gradguard stopped training at step 0: the gradient check FAILED on hidden.weight, "
        "hidden.bias (on_failure='stop'"
    )
    assert "FAILED, 2 of 4 tensors wrong" in messages[0]


def test_warn_keeps_training() -> None:
    """on_failure='warn' warns at every failing check and the fit runs to the end."""
    x, y = data()
    callback = GradCheckCallback(
        lambda m: F.mse_loss(m(x[:16]), y[:16]), every=4, on_failure="warn", seed=3
    )
    with pytest.warns(gg.GradientCheckWarning, match="training goes on"):
        trainer = _fit(_module(error=0.01), [callback])
    assert trainer.global_step == 12 and len(callback.reports) == 3


def test_raise_propagates_out_of_fit() -> None:
    """on_failure='raise' raises GradientCheckError out of trainer.fit."""
    x, y = data()
    callback = GradCheckCallback(lambda m: F.mse_loss(m(x), y), every=1, on_failure="raise")
    with pytest.raises(gg.GradientCheckError, match=r"hidden\.weight"):
        _fit(_module(error=0.01), [callback])


def test_probe_batch_uses_training_step_without_polluting_the_logs() -> None:
    """probe=batch runs training_step on it; its self.log calls never reach the trainer."""
    module = _module()
    x, y = data()
    module.probe = (x[:8], y[:8])
    callback = GradCheckCallback(probe=module.probe, every=2, max_checks=2, seed=4)
    trainer = _fit(module, [callback])
    assert [r.passed for r in callback.reports] == [True, True]
    assert "probe_was_logged" not in trainer.callback_metrics
    assert "train_loss" in trainer.callback_metrics


def test_one_instance_serves_two_fits() -> None:
    """State is reset at each fit's start: the second fit checks afresh."""
    x, y = data()
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
        ({"loss": lambda m: m, "on_failure": "halt"}, "on_failure must be one of 'stop'"),
        ({"loss": lambda m: m, "every": 0}, "every"),
        ({"loss": lambda m: m, "eps": -1.0}, "eps"),
    ],
)
def test_bad_options_raise_at_construction(kwargs: dict[str, Any], match: str) -> None:
    """Bad configuration fails when the callback is built, before any training."""
    with pytest.raises(gg.SettingsError, match=match):
        GradCheckCallback(**kwargs)


def test_a_resumed_fit_continues_the_run(tmp_path: pathlib.Path) -> None:
    """state_dict/load_state_dict: a fit resumed from a checkpoint goes on counting batches,
    keeps the run id and seed, and counts max_checks over both fits; the log reads as one run."""
    x, y = data()
    log = tmp_path / "resume.jsonl"

    def callback() -> GradCheckCallback:
        return GradCheckCallback(
            lambda m: F.mse_loss(m(x[:16]), y[:16]), every=3, max_checks=3, log_file=str(log)
        )

    first = callback()
    trainer = _fit(_module(), [first], steps=5, root=tmp_path)
    checkpoint = tmp_path / "five.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert [r.passed for r in first.reports] == [True, True]  # batches 0 and 3
    second = callback()
    _fit(_module(), [second], steps=12, root=tmp_path, ckpt_path=checkpoint)
    assert len(second.reports) == 1 and not second.active  # batch 6: the third pass
    assert second.guard is not None and first.guard is not None
    assert second.guard.run_id == first.guard.run_id
    assert second.guard.seed == first.guard.seed
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [
        ("gradcheck", 0),
        ("gradcheck", 3),
        ("gradcheck", 6),
        ("guard_disabled", 6),
    ]
    assert {r["run_id"] for r in records} == {first.guard.run_id}
    assert records[2]["coverage"] > records[1]["coverage"]  # new coordinates, not the first's


def test_two_callbacks_keep_their_own_state(tmp_path: pathlib.Path) -> None:
    """Two callbacks with different schedules have different checkpoint keys."""
    x, y = data()
    a = GradCheckCallback(lambda m: F.mse_loss(m(x), y), every=2)
    b = GradCheckCallback(lambda m: F.mse_loss(m(x), y), every=5)
    assert a.state_key != b.state_key


def test_figures_reach_a_tensorboard_logger_through_pl_module_log(tmp_path: pathlib.Path) -> None:
    """The callback logs each check's figures with ``pl_module.log``: a real TensorBoardLogger
    writes ``gradcheck/difference``, ``gradcheck/failed`` and one difference per tensor at
    the checked steps (``log_every_n_steps=1``), and holds them until the epoch ends."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = data()
    callback = GradCheckCallback(
        lambda m: F.mse_loss(m(x[:16]), y[:16]), every=3, max_checks=2, seed=1
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    trainer = lightning.Trainer(
        callbacks=[callback],
        max_steps=10,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(tmp_path), name="run", version=0),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(_module(), loader)
    accumulator = EventAccumulator(str(tmp_path / "run" / "version_0"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"gradcheck/difference", "gradcheck/failed"} <= tags
    names = [p.name for p in callback.reports[0].params]
    assert {f"gradcheck/difference/{name}" for name in names} <= tags
    written = {s.step: s.value for s in accumulator.Scalars("gradcheck/difference")}
    first, second = (r.difference for r in callback.reports)
    assert written[0] == pytest.approx(first, rel=1e-6)
    assert written[3] == pytest.approx(second, rel=1e-6)
    # Lightning writes a value logged from a hook again at each logging step until the
    # epoch ends (8 batches here): the dashboard holds the last check's figure.
    assert written[1] == written[0] and written[7] == written[3] and 8 not in written
    assert set(s.value for s in accumulator.Scalars("gradcheck/failed")) == {0.0}
