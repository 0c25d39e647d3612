"""The Hugging Face Trainer callback, with a real Trainer and a tiny GPT-2 built from its config.

No downloads: the model comes from ``GPT2Config`` (2 layers, width 32) and the data are token
ids made in memory. Each training run is a few optimizer steps on CPU; the runs a module
shares are made once (``trained``).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import random
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_toy import data as _data  # noqa: E402
from hf_toy import model as _model  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

import gradguard as gg  # noqa: E402
from gradguard.figures import figures  # noqa: E402
from gradguard.guard import DISABLE_ENV  # noqa: E402
from gradguard_torch._compat import calling_trainer  # noqa: E402
from gradguard_torch.transformers import GradCheckCallback, first_batch  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a loaded 2-core machine two threads spin and a forward takes 50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    yield
    torch.set_num_threads(threads)


def _train(
    model: Any,
    callbacks: list[Any],
    out: pathlib.Path,
    *,
    steps: int,
    accumulation: int = 1,
    report_to: list[str] | None = None,
    trainer_class: type = transformers.Trainer,
    late_callbacks: list[Any] | None = None,
) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=report_to or [],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=_data(), callbacks=callbacks)
    for callback in late_callbacks or ():
        trainer.add_callback(callback)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*loss_type=None.*")
        trainer.train()
    return trainer


def _parameters(model: Any) -> list[Any]:
    return [p.detach().clone() for p in model.parameters()]


class _GradsSeen(transformers.TrainerCallback):  # type: ignore[misc]
    """Records, after GradCheckCallback's check, whether any ``.grad`` is set at step begin."""

    def __init__(self) -> None:
        self.any_grad: list[bool] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any, **_: Any) -> None:
        self.any_grad.append(any(p.grad is not None for p in model.parameters()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same correct model (the custom Function written right in layer 1's MLP, dropout on)
    trained twice, with the callback (TensorBoard on) and without.

    5 optimizer steps of 2 accumulated micro-batches; checks every 2 optimizer steps, at most
    2: steps 0 and 2 are checked, then the callback switches off.
    """
    root = tmp_path_factory.mktemp("hf")
    log = root / "hf.jsonl"
    callback = GradCheckCallback(every=2, max_checks=2, log_file=str(log), seed=3)
    grads = _GradsSeen()
    checked = _model(buggy=False)
    trainer = _train(
        checked,
        [callback],
        root / "checked",
        steps=5,
        accumulation=2,
        report_to=["tensorboard"],
        late_callbacks=[grads],
    )
    rng_after_checked = torch.random.get_rng_state()
    plain = _model(buggy=False)
    _train(plain, [], root / "plain", steps=5, accumulation=2)
    return {
        "callback": callback,
        "trainer": trainer,
        "log": log,
        "grads": grads,
        "checked": _parameters(checked),
        "plain": _parameters(plain),
        "rng": (rng_after_checked, torch.random.get_rng_state()),
        "events": root / "checked",
    }


def test_a_correct_model_trains_bit_identically_with_the_callback(trained: dict[str, Any]) -> None:
    """Final parameters and the global RNG state: the same bits with two checks as without."""
    assert [r.passed for r in trained["callback"].reports] == [True, True]
    assert all(torch.equal(a, b) for a, b in zip(trained["checked"], trained["plain"], strict=True))
    assert torch.equal(*trained["rng"])


def test_checks_count_optimizer_steps_and_switch_off(trained: dict[str, Any]) -> None:
    """Under 2-step accumulation the checks are at optimizer steps 0 and 2, then it stops."""
    records = [json.loads(line) for line in trained["log"].read_text().splitlines()]
    assert [(r["event"], r["source"], r["step"]) for r in records] == [
        ("gradcheck", "transformers", 0),
        ("gradcheck", "transformers", 2),
        ("guard_disabled", "transformers", 2),
    ]
    assert not trained["callback"].active
    assert trained["trainer"].state.global_step == 5


def test_the_users_grad_fields_are_left_alone(trained: dict[str, Any]) -> None:
    """After each check (at step begin) every ``.grad`` is still None, as the Trainer left it."""
    assert trained["grads"].any_grad == [False] * 5


def test_figures_reach_the_trainer_logs_and_tensorboard(trained: dict[str, Any]) -> None:
    """Each check's figures are in ``log_history`` and in the event files ``report_to`` wrote."""
    reports = trained["callback"].reports
    history = [e for e in trained["trainer"].state.log_history if "gradcheck/failed" in e]
    assert [e["step"] for e in history] == [0, 2]
    assert history[0]["gradcheck/difference"] == reports[0].difference
    (events,) = trained["events"].rglob("events.out.tfevents*")
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    expected = {"train/" + key for key in figures(reports[0])}
    assert "train/gradcheck/difference/transformer.h.1.mlp.c_fc.weight" in expected
    assert expected <= tags
    scalars = accumulator.Scalars("train/gradcheck/difference")
    assert [s.step for s in scalars] == [0, 2]
    assert [s.value for s in scalars] == pytest.approx([r.difference for r in reports], rel=1e-6)
    assert [s.value for s in accumulator.Scalars("train/gradcheck/failed")] == [0.0, 0.0]


def test_a_planted_bug_in_a_custom_function_is_caught_at_the_first_check_and_named(
    tmp_path: pathlib.Path,
) -> None:
    """The weight gradient of a custom Conv1D Function in layer 1's MLP: step 0 fails, names
    exactly that tensor, warns and stops training after the step about to run."""
    callback = GradCheckCallback(every=10, log_file=str(tmp_path / "bug.jsonl"), seed=0)
    with pytest.warns(gg.GradientCheckWarning, match="stopped training at step 0"):
        trainer = _train(_model(buggy=True), [callback], tmp_path, steps=4)
    (report,) = callback.reports
    assert report.failed == ("transformer.h.1.mlp.c_fc.weight",)
    assert callback.stopped_at == 0
    assert trainer.state.global_step == 1
    assert trainer.state.log_history[0]["gradcheck/failed"] == 1.0


class _RegularizedTrainer(transformers.Trainer):  # type: ignore[misc]
    """A Trainer whose ``compute_loss`` adds a penalty with a wrong hand-written gradient."""

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        return loss + _HalfSquare.apply(model.transformer.ln_f.bias)


class _HalfSquare(torch.autograd.Function):
    """0.5 * sum(b^2), whose backward forgets the 0.5 (returns 2b)."""

    @staticmethod
    def forward(ctx: Any, b: Any) -> Any:
        ctx.save_for_backward(b)
        return 0.5 * (b * b).sum()

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        (b,) = ctx.saved_tensors
        return grad * 2 * b


def test_an_overridden_compute_loss_is_what_is_checked(tmp_path: pathlib.Path) -> None:
    """With ``trainer=``, the check's loss is the Trainer's own ``compute_loss``: the wrong
    penalty gradient it adds is caught (only the tensor it touches is checked, for speed)."""
    model = _model(dropout=0.0)
    with torch.no_grad():
        model.transformer.ln_f.bias.normal_()  # a zero bias would hide the factor
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, save_strategy="no"
    )
    trainer = _RegularizedTrainer(model=model, args=args, train_dataset=_data())
    callback = GradCheckCallback(
        trainer=trainer, on_failure="log", seed=0, tensors=["transformer.ln_f.bias"]
    )
    trainer.add_callback(callback)
    trainer.train()
    (report,) = callback.reports
    assert report.failed == ("transformer.ln_f.bias",)


def test_first_batch_is_the_loaders_first_and_moves_no_random_state() -> None:
    """A shuffling loader (seed drawn from torch's global generator): the probe is the batch
    the loader then gives first, and every random state is as before."""
    loader = DataLoader(_data(), batch_size=4, shuffle=True)
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    before = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    probe = first_batch(loader)
    after = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert np.array_equal(before[2], after[2])
    assert torch.equal(probe["input_ids"], next(iter(loader))["input_ids"])


class _Stream(IterableDataset):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(_data())


def test_an_iterable_dataset_needs_a_probe() -> None:
    """Batches that are not drawn by index cannot be peeked at: the error says pass probe=."""
    with pytest.raises(gg.SettingsError, match="probe=batch"):
        first_batch(DataLoader(_Stream(), batch_size=4))


def test_bad_settings_are_refused_at_construction() -> None:
    """A probe that is not a dict of inputs, an unknown policy, a bad schedule: SettingsError."""
    with pytest.raises(gg.SettingsError, match="dict of model inputs"):
        GradCheckCallback(probe=[1, 2])
    with pytest.raises(gg.SettingsError, match="on_failure"):
        GradCheckCallback(on_failure="explode")  # type: ignore[arg-type]
    with pytest.raises(gg.SettingsError, match="every"):
        GradCheckCallback(every=0)
    with pytest.raises(gg.SettingsError, match="Trainer"):
        GradCheckCallback(trainer=object())  # type: ignore[arg-type]


def test_calling_trainer_is_none_outside_a_trainer() -> None:
    """The frame walk that finds the Trainer finds nothing when no Trainer calls."""
    assert calling_trainer() is None


def _run_example(name: str, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run an example's ``main()`` in this process (transformers is imported already: a child
    process would spend seconds importing it again) and return what it printed."""
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(path), *args])
        module.main()
    return capsys.readouterr().out


def test_hf_trainer_example_catches_the_bug_and_trains_the_fix(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/hf_trainer.py: the buggy Function stops training at step 0 naming its weight;
    the fix passes two checks, switches off, and TensorBoard events are written."""
    log = tmp_path / "hf.jsonl"
    options = ("--log", str(log), "--out", str(tmp_path / "out"))
    out = _run_example("hf_trainer.py", *options, capsys=capsys)
    assert "stopped at step 0; wrong: transformer.h.1.mlp.c_fc.weight" in out
    assert "trained 1 of 6 optimizer steps" in out and "trained 6 of 6 optimizer steps" in out
    assert out.count(": pass, difference") == 2 and "switched itself off: True" in out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["event"], r.get("passed")) for r in records] == [
        ("gradcheck", False),
        ("gradcheck", True),
        ("gradcheck", True),
        ("guard_disabled", None),
    ]
    assert list((tmp_path / "out" / "fixed").rglob("events.out.tfevents*"))


def test_the_environment_switch_makes_the_callback_inert(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRADGUARD_DISABLE: no probe is read (an iterable dataset is no error), no check, one
    ``guard_disabled`` record with reason "environment"."""
    monkeypatch.setenv(DISABLE_ENV, "1")
    log = tmp_path / "off.jsonl"
    callback = GradCheckCallback(every=1, log_file=str(log))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True, save_strategy="no"
    )
    trainer = transformers.Trainer(
        model=_model(), args=args, train_dataset=_Stream(), callbacks=[callback]
    )
    trainer.train()
    assert callback.reports == () and not callback.active
    assert trainer.state.global_step == 2
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["event"], record["reason"]) == ("guard_disabled", "environment")
