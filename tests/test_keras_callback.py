"""GradCheckCallback: gradient checks during Keras ``fit``, on a probe batch, then switched off.

Real TensorFlow and Keras throughout (CPU). The MirroredStrategy test and the import test run
in child processes: logical devices must be configured before TensorFlow initializes them,
and the import test needs a fresh interpreter.
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
from jsonschema import Draft202012Validator
from tensorflow.python.framework import config as tf_config  # to undo op determinism

import gradguard as gg
from gradguard.guard import DISABLE_ENV
from gradguard_tensorflow import GradCheckCallback, ModelLoss, model_loss
from zoo import tf_models

ROOT = pathlib.Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 5)).astype(np.float32)
Y = RNG.standard_normal((32, 2)).astype(np.float32)


def mlp(name: str = "mlp") -> keras.Model:
    """A fresh, compiled 5 -> 6 (tanh) -> 2 regression MLP with fixed weights."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="tanh", name="h"),
            keras.layers.Dense(2, name="out"),
        ],
        name=name,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def fit(model: keras.Model, callback: Any = None, **options: Any) -> Any:
    """``model.fit`` on X, Y (4 steps of 8 per epoch), quietly, in order, with a callback
    (or a list of them)."""
    options = {"x": X, "y": Y, "batch_size": 8, "epochs": 1, **options}
    callbacks = callback if isinstance(callback, list) else [] if callback is None else [callback]
    return model.fit(verbose=0, shuffle=False, callbacks=callbacks, **options)


def steps_run(model: keras.Model) -> int:
    return int(model.optimizer.iterations.numpy())


_SCHEMA = json.loads(
    (importlib.resources.files("gradguard.logs") / "schemas" / "log-record.schema.json").read_text()
)


def records(path: pathlib.Path) -> list[dict[str, Any]]:
    """The log's records, each validated against the shipped log schema."""
    found = [json.loads(line) for line in path.read_text().splitlines()]
    for record in found:
        Draft202012Validator(_SCHEMA).validate(record)
    return found


def bug_model() -> tuple[keras.Model, ModelLoss]:
    """The zoo's MLP whose tf.custom_gradient doubles its kernel's gradient."""
    model, loss = tf_models.bug_cases()[0].make()
    assert isinstance(loss, ModelLoss)
    return model, loss


def tiled(loss: ModelLoss, times: int = 2) -> dict[str, Any]:
    """Training data for a zoo model: its probe batch, repeated."""
    return {
        "x": np.concatenate([loss.x.numpy()] * times),
        "y": np.concatenate([loss.y.numpy()] * times),
        "batch_size": int(loss.x.shape[0]) // 2,
    }


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"every": 0}, "every"),
        ({"start": -1}, "start"),
        ({"max_checks": 0}, "max_checks"),
        ({"on_failure": "explode"}, "on_failure must be one of 'stop', 'raise'"),
        ({"tensors_per_check": 0}, "tensors_per_check"),
        ({"verbose": 2}, "verbose must be 0"),
        ({"eps": -1.0}, "eps"),
        ({"sample": 0, "directions": 0}, "nothing to check"),
        ({"seed": -1}, "seed"),
        ({"precision": "double"}, "precision"),
        ({"log_file": 123}, "log_file must be a path"),
    ],
)
def test_options_out_of_range_are_refused_at_construction(
    options: dict[str, Any], match: str
) -> None:
    """A bad option raises SettingsError when the callback is made, not during fit."""
    with pytest.raises(gg.SettingsError, match=match):
        GradCheckCallback((X, Y), **options)


def test_the_class_is_loaded_lazily_with_keras() -> None:
    """`import gradguard_tensorflow` imports neither Keras nor TensorFlow; the first access of
    `GradCheckCallback` does, and gives a keras.callbacks.Callback subclass."""
    code = textwrap.dedent(
        """
        import sys, gradguard_tensorflow
        assert not {"keras", "tensorflow"} & set(sys.modules), "imported too early"
        assert "GradCheckCallback" in gradguard_tensorflow.__all__
        cls = gradguard_tensorflow.GradCheckCallback
        import keras
        assert issubclass(cls, keras.callbacks.Callback)
        try:
            gradguard_tensorflow.NoSuchThing
        except AttributeError:
            print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


# -- schedule, switching off, the environment, reuse ------------------------------------------


def test_global_steps_are_counted_across_epochs_and_logged_as_keras(
    tmp_path: pathlib.Path,
) -> None:
    """Steps count on over epochs (Keras restarts its batch index): every=3 over 4 epochs of
    2 steps checks at global steps 0, 3 and 6; records say source "keras", share a run id."""
    log = tmp_path / "fit.jsonl"
    cb = GradCheckCallback((X[:8], Y[:8]), every=3, max_checks=None, log_file=log)
    fit(mlp(), cb, x=X[:16], y=Y[:16], epochs=4)
    found = records(log)
    assert [r["step"] for r in found] == [0, 3, 6]
    assert {r["source"] for r in found} == {"keras"}
    assert {r["run_id"] for r in found} == {cb.guard.run_id}  # type: ignore[union-attr]
    assert len(cb.reports) == 3 and all(r.passed for r in cb.reports)
    assert cb.active


def test_switches_itself_off_after_max_checks_passing_checks(tmp_path: pathlib.Path) -> None:
    """After max_checks passing checks the callback is inactive for the rest of the fit and
    logs a guard_disabled record (reason "passed", at the step of the last check)."""
    log = tmp_path / "fit.jsonl"
    cb = GradCheckCallback((X[:8], Y[:8]), every=2, max_checks=2, log_file=log)
    fit(mlp(), cb, epochs=3)
    assert len(cb.reports) == 2 and not cb.active
    found = records(log)
    assert [r["event"] for r in found] == ["gradcheck", "gradcheck", "guard_disabled"]
    assert [r["step"] for r in found] == [0, 2, 2]
    assert found[-1]["reason"] == "passed" and found[-1]["source"] == "keras"


class _SwitchOff(keras.callbacks.Callback):  # type: ignore[misc]
    """Calls ``target.disable()`` before batch ``batch``, as a user's own callback might."""

    def __init__(self, target: GradCheckCallback, batch: int) -> None:
        super().__init__()
        self.target, self.batch = target, batch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch == self.batch:
            self.target.disable()


def test_disable_switches_the_checks_off_for_the_rest_of_the_fit(tmp_path: pathlib.Path) -> None:
    """cb.disable() mid-fit: no check after it, a guard_disabled record (reason "user") at
    the step it happened; the next fit checks again."""
    log = tmp_path / "fit.jsonl"
    cb = GradCheckCallback((X[:8], Y[:8]), every=1, max_checks=None, log_file=log)
    fit(mlp(), [_SwitchOff(cb, 2), cb])
    assert len(cb.reports) == 2 and not cb.active
    found = records(log)
    assert [(r["event"], r["step"]) for r in found] == [
        ("gradcheck", 0),
        ("gradcheck", 1),
        ("guard_disabled", 2),
    ]
    assert found[-1]["reason"] == "user"
    fit(mlp(), cb, x=X[:8], y=Y[:8])
    assert len(cb.reports) == 1 and cb.active


def test_environment_switch_makes_the_callback_inert(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """GRADGUARD_DISABLE=1: nothing is evaluated (not even a probe that does not fit the
    model), fit runs normally, and one guard_disabled record says why."""
    monkeypatch.setenv(DISABLE_ENV, "1")
    log = tmp_path / "fit.jsonl"
    cb = GradCheckCallback((np.ones((4, 9)), np.ones((4, 2))), every=1, log_file=log)
    assert not cb.active
    model = mlp()
    fit(model, cb)
    assert steps_run(model) == 4 and cb.reports == () and not cb.active
    [record] = records(log)
    assert record["event"] == "guard_disabled" and record["reason"] == "environment"


def test_one_instance_serves_several_fits(tmp_path: pathlib.Path) -> None:
    """on_train_begin resets the run: a second fit checks again from step 0, with fresh
    reports and a fresh run id, after the first fit switched the callback off. The traced
    check functions are kept for the same model, and dropped when it is compiled again."""
    log = tmp_path / "fit.jsonl"
    cb = GradCheckCallback((X[:8], Y[:8]), every=1, max_checks=1, log_file=log)
    model = mlp()
    fit(model, cb)
    first = cb.guard
    assert not cb.active and len(cb.reports) == 1 and "trace" not in cb.reports[0].notes
    fit(model, cb)
    assert not cb.active and len(cb.reports) == 1 and cb.guard is not first
    assert cb.reports[0].notes["trace"] == "reused from an earlier check with this model_loss"
    found = records(log)
    assert [r["event"] for r in found] == ["gradcheck", "guard_disabled"] * 2
    assert [r["step"] for r in found] == [0, 0, 0, 0]
    assert found[0]["run_id"] != found[2]["run_id"]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mae")
    mae = float(model_loss(model, X[:8], Y[:8])())
    fit(model, cb)
    assert "trace" not in cb.reports[0].notes  # traced anew: the compiled loss changed
    assert cb.reports[0].loss == pytest.approx(mae, rel=1e-6)


def test_steps_per_execution_checks_at_the_first_boundary_after_a_due_step(
    tmp_path: pathlib.Path,
) -> None:
    """With steps_per_execution=2 the hooks see steps 0, 2, 4, 6: every=3 checks at 0, then
    at 4 (step 3 ran inside the execution from 2) and at 6."""
    log = tmp_path / "fit.jsonl"
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=2)
    cb = GradCheckCallback((X[:8], Y[:8]), every=3, max_checks=None, log_file=log)
    fit(model, cb, batch_size=4)
    assert [r["step"] for r in records(log)] == [0, 4, 6]


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_failure", ["raise", "stop", "warn", "log"])
def test_a_failing_check_raises_stops_warns_or_logs(
    on_failure: str, tmp_path: pathlib.Path, recwarn: pytest.WarningsRecorder
) -> None:
    """A wrong gradient (2x on one kernel) is found at step 0, before any update. "raise":
    GradientCheckError out of fit, no step run; "stop": a warning, model.stop_training, fit
    ends after the step about to run; "warn": warnings, training goes on, checks go on;
    "log": records only. Failing checks never switch the callback off."""
    model, loss = bug_model()
    log = tmp_path / "fit.jsonl"
    cb = GradCheckCallback(
        (loss.x, loss.y), every=2, max_checks=1, on_failure=on_failure, log_file=log, seed=0
    )  # type: ignore[arg-type]
    if on_failure == "raise":
        with pytest.raises(gg.GradientCheckError, match="kernel_bug/custom/kernel") as caught:
            fit(model, cb, **tiled(loss))
        assert caught.value.report.failed == ("kernel_bug/custom/kernel",)  # type: ignore[attr-defined]
    else:
        fit(model, cb, **tiled(loss))
    expected_steps, expected_checks, expected_warnings = {
        "raise": (0, 1, 0),
        "stop": (1, 1, 1),
        "warn": (4, 2, 2),
        "log": (4, 2, 0),
    }[on_failure]
    assert steps_run(model) == expected_steps
    assert len(cb.reports) == expected_checks and cb.active
    assert all(r.failed == ("kernel_bug/custom/kernel",) for r in cb.reports)
    warned = [w for w in recwarn if issubclass(w.category, gg.GradientCheckWarning)]
    assert len(warned) == expected_warnings
    assert all(
        "FAILED, 1 of 6 tensors wrong: kernel_bug/custom/kernel" in str(w.message) for w in warned
    )
    assert model.stop_training is (on_failure == "stop")
    assert [r["passed"] for r in records(log)] == [False] * expected_checks
    if on_failure == "stop":
        assert str(warned[0].message).startswith("gradguard stopped training at step 0")


def test_stop_is_the_default_failure_policy_of_every_front_door() -> None:
    """The Keras callback, the Guard and gradguard.policy agree on the default: "stop"."""
    assert GradCheckCallback((X, Y)).on_failure == gg.policy.DEFAULT_ON_FAILURE == "stop"
    assert gg.Guard(lambda p: 0.0, X).on_failure == "stop"


def test_verbose_prints_a_line_per_check_as_keras_callbacks_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verbose=1: "Step s: gradient check passed, ..." per check and the switch-off;
    verbose=0 (default) prints nothing."""
    fit(mlp(), GradCheckCallback((X[:8], Y[:8]), every=2, max_checks=2, seed=0), epochs=2)
    assert capsys.readouterr().out == ""
    fit(mlp(), GradCheckCallback((X[:8], Y[:8]), every=2, max_checks=2, seed=0, verbose=1))
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 2
    assert lines[0].startswith("Step 0: gradient check passed, 4 variables, difference ")
    assert lines[1].startswith("Step 2: gradient check passed")
    assert lines[1].endswith("; 2 passing checks: GradCheckCallback switched off")


# -- bad input ------------------------------------------------------------------------------------


def _wrong_probe_shape() -> tuple[keras.Model, GradCheckCallback]:
    return mlp(), GradCheckCallback((np.ones((4, 7), np.float32), Y[:4]))


def _no_loss() -> tuple[keras.Model, GradCheckCallback]:
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)], name="lossless")
    model.compile(optimizer="sgd")
    return model, GradCheckCallback((X[:8], Y[:8]))


def _frozen() -> tuple[keras.Model, GradCheckCallback]:
    model = mlp()
    model.trainable = False
    model.compile(optimizer="sgd", loss="mse")
    return model, GradCheckCallback((X[:8], Y[:8]))


def _not_a_batch() -> tuple[keras.Model, GradCheckCallback]:
    return mlp(), GradCheckCallback(X[:8])


def _empty_dataset() -> tuple[keras.Model, GradCheckCallback]:
    empty = tf.data.Dataset.from_tensor_slices((X, Y)).take(0).batch(4)
    return mlp(), GradCheckCallback(empty)


def _nan_probe() -> tuple[keras.Model, GradCheckCallback]:
    return mlp(), GradCheckCallback((np.full((4, 5), np.nan, np.float32), Y[:4]))


def _no_labels() -> tuple[keras.Model, GradCheckCallback]:
    return mlp(), GradCheckCallback((X[:8],))


def _unbatched_dataset() -> tuple[keras.Model, GradCheckCallback]:
    return mlp(), GradCheckCallback(tf.data.Dataset.from_tensor_slices((X, Y)))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (_wrong_probe_shape, gg.SettingsError, r"probe batch does not fit model 'mlp'.*\(4, 7\)"),
        (_no_loss, gg.LossError, "no loss to compute"),
        (_frozen, gg.InvalidParamsError, "no trainable variables"),
        (_not_a_batch, gg.SettingsError, r"probe must be \(x, y\)"),
        (_empty_dataset, gg.SettingsError, "probe dataset is empty"),
        (_nan_probe, gg.LossError, "not finite"),
        (_no_labels, gg.SettingsError, r"the probe has no labels .*pass probe=\(x, y\)"),
        (_unbatched_dataset, gg.SettingsError, r"single samples .*probe=dataset\.batch\(n\)"),
    ],
    ids=[
        "probe-shape",
        "no-loss",
        "frozen",
        "not-a-batch",
        "empty-dataset",
        "nan-loss",
        "no-labels",
        "unbatched-dataset",
    ],
)
def test_bad_input_is_refused_at_train_begin_before_any_step(
    make: Callable[[], tuple[keras.Model, GradCheckCallback]], error: type, match: str
) -> None:
    """A probe that does not fit, a model without a loss or without trainable variables, a
    probe that is not a batch: a GradGuardError from on_train_begin, no step run, no weight
    or statistic changed."""
    model, cb = make()
    before = tf_models.snapshot(model)
    with pytest.raises(error, match=match):
        fit(model, cb)
    assert steps_run(model) == 0
    assert tf_models.snapshot(model) == before


def test_probe_errors_are_short_and_plain() -> None:
    """An unbatched dataset's error has no colour codes and no sample values in it."""
    model, cb = _unbatched_dataset()
    with pytest.raises(gg.SettingsError) as caught:
        fit(model, cb)
    message = str(caught.value)
    assert "\x1b[" not in message and "Arguments received" not in message
    assert str(X[0][0])[:6] not in message and len(message) < 700


class Subclassed(keras.Model):  # type: ignore[misc]
    """The usual subclassed model: layers in __init__, call(), no build(), no Input."""

    def __init__(self) -> None:
        super().__init__(name="sub")
        self.hidden = keras.layers.Dense(6, activation="tanh")
        self.out = keras.layers.Dense(2)

    def call(self, x: Any) -> Any:
        return self.out(self.hidden(x))


def test_a_subclassed_model_is_built_from_the_probe_and_trains_bit_identically() -> None:
    """An unbuilt subclassed model is built from the probe's shapes (symbolically, as fit
    builds it), checked, and trained to the same weights as without the callback."""

    def train(callback: Any) -> list[np.ndarray]:
        keras.utils.set_random_seed(3)
        model = Subclassed()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        assert not model.built
        fit(model, callback)
        return [v.numpy() for v in model.variables]

    cb = GradCheckCallback((X[:8], Y[:8]), every=2, max_checks=2, seed=0)
    checked, plain = train(cb), train(None)
    assert [r.passed for r in cb.reports] == [True, True]
    assert len(cb.reports[0].params) == 4
    assert all(a.tobytes() == b.tobytes() for a, b in zip(checked, plain, strict=True))


def test_an_uncompiled_model_is_refused_at_train_begin() -> None:
    """An uncompiled model (fit refuses it too; a custom loop calling the hooks would not)
    gets a LossError that says to compile it."""
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)], name="raw")
    cb = GradCheckCallback((X[:8], Y[:8]))
    cb.set_model(model)
    with pytest.raises(gg.LossError, match="'raw' is not compiled"):
        cb.on_train_begin()


# -- what a check sees ----------------------------------------------------------------------------


def test_the_probe_can_be_a_dataset_with_sample_weights() -> None:
    """A tf.data.Dataset probe gives its first batch, (x, y, sample_weight) included: the
    check's loss is model.compute_loss on that batch, weights applied."""
    weights = np.tile([1.0, 0.0], 16).astype(np.float32)
    model = mlp()
    expected = float(model_loss(model, X[:8], Y[:8], weights[:8])())
    assert expected != pytest.approx(float(model_loss(model, X[:8], Y[:8])()), rel=1e-3)
    dataset = tf.data.Dataset.from_tensor_slices((X, Y, weights)).batch(8)
    cb = GradCheckCallback(dataset, every=10, max_checks=1)
    fit(model, cb)
    assert cb.reports[0].loss == pytest.approx(expected, rel=1e-6)


def test_check_options_pass_through_to_every_check() -> None:
    """sample, directions, tensors, tolerance and eps reach the checks unchanged."""
    cb = GradCheckCallback(
        (X[:8], Y[:8]),
        every=1,
        max_checks=1,
        sample=3,
        directions=1,
        tensors=["mlp/h/kernel"],
        tolerance=1e-5,
        eps=1e-4,
    )
    fit(mlp(), cb)
    [report] = cb.reports
    [param] = report.params
    assert param.name == "mlp/h/kernel" and param.coordinates == 3 and param.directions == 1
    assert report.tolerance == 1e-5 and report.eps == 1e-4 and not report.eps_relative


def test_checks_rotate_coordinates_and_a_seed_reproduces_them() -> None:
    """Successive checks probe new coordinates (coverage grows); the same seed gives the
    same checks in another fit, another seed other ones."""

    def run(seed: int) -> list[gg.CheckReport]:
        cb = GradCheckCallback(
            (X[:8], Y[:8]), every=1, max_checks=None, sample=4, directions=0, seed=seed
        )
        fit(mlp(), cb)
        return list(cb.reports)

    first, again, other = run(11), run(11), run(12)
    coverage = [r.coverage for r in first]
    assert all(a < b for a, b in itertools.pairwise(coverage))  # type: ignore[operator]

    def probes(reports: list[gg.CheckReport]) -> list[Any]:
        return [(r.seed, [p.worst_index for p in r.params]) for r in reports]

    assert probes(first) == probes(again)
    assert [r.seed for r in first] != [r.seed for r in other]


# -- the Keras zoo -------------------------------------------------------------------------------

BUGS = tf_models.bug_cases()
CORRECT = tf_models.correct_cases()


@pytest.mark.parametrize("case", BUGS, ids=[c.name for c in BUGS])
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")  # stop_gradient, by design
def test_zoo_bug_is_caught_at_the_first_check_during_fit(case: tf_models.Case) -> None:
    """Each planted bug fails the first check of the fit, on exactly the variables it
    corrupts; on_failure="stop" ends fit after one step."""
    model, loss = case.make()
    assert isinstance(loss, ModelLoss)
    cb = GradCheckCallback(
        (loss.x, loss.y), training=loss.training, every=2, on_failure="stop", seed=0
    )
    with pytest.warns(gg.GradientCheckWarning):
        fit(model, cb, **tiled(loss))
    [report] = cb.reports
    assert set(report.failed) == case.corrupted, str(report)
    assert steps_run(model) == 1


@pytest.mark.parametrize("case", CORRECT, ids=[c.name for c in CORRECT])
def test_zoo_correct_model_passes_and_the_callback_switches_off(case: tf_models.Case) -> None:
    """A correct float32 model (CNN with BatchNorm, Dropout and L2 in both modes, GRU,
    SimpleRNN, a correct custom gradient) passes every check during fit, including checks
    after training steps, and the callback switches itself off."""
    model, loss = case.make()
    assert isinstance(loss, ModelLoss)
    cb = GradCheckCallback((loss.x, loss.y), training=loss.training, every=2, max_checks=2)
    fit(model, cb, epochs=2, **tiled(loss))
    assert [r.passed for r in cb.reports] == [True, True], "\n".join(map(str, cb.reports))
    assert not cb.active and steps_run(model) == 8


# -- bit-identical training -----------------------------------------------------------------------


@pytest.fixture
def op_determinism() -> Iterator[None]:
    """TensorFlow's deterministic ops for one test, put back as they were afterwards."""
    was = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was:
        tf_config.disable_op_determinism()


class _Disturb(keras.callbacks.Callback):  # type: ignore[misc]
    """A control: one forward pass in training mode before step 2 (advances the Dropout seed
    generator and the BatchNormalization statistics), as a careless check would."""

    def __init__(self, x: Any) -> None:
        super().__init__()
        self.x = x

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch == 2:
            self.model(self.x, training=True)


@pytest.mark.usefixtures("op_determinism")
def test_training_with_the_callback_is_bit_identical_to_training_without_it() -> None:
    """Checks every 2 steps (training-mode forward passes, BatchNormalization, Dropout, L2,
    shuffled batches) leave every weight, statistic, seed generator and optimizer variable
    bit-identical to a run without the callback; the comparison does see a disturbance."""
    case = tf_models.correct_cases()[2]  # the CNN in training mode
    assert case.name == "cnn_training"
    rng = np.random.default_rng(5)
    x = rng.standard_normal((48, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 4, size=48)

    def train(callback: Any) -> list[bytes]:
        model, _ = case.make()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=model.loss)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback] if callback else [])
        # Values only: variable paths carry global name counters (seed_generator_6).
        variables = [*model.variables, *model.optimizer.variables]
        # 6 trainable, 2 statistics, a seed state; Adam: iterations, learning rate, 2 x 6 moments
        assert len(variables) == 23
        return [np.asarray(v.numpy()).tobytes() for v in variables]

    plain = train(None)
    _, loss = case.make()
    assert isinstance(loss, ModelLoss)
    cb = GradCheckCallback((loss.x, loss.y), training=True, every=2, max_checks=None, seed=1)
    assert train(cb) == plain
    assert len(cb.reports) == 6 and all(r.passed for r in cb.reports)
    assert train(_Disturb(loss.x)) != plain


# -- MirroredStrategy -----------------------------------------------------------------------------

_MIRRORED = textwrap.dedent(
    """
    import contextlib, json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import gradguard as gg
    from gradguard_tensorflow import GradCheckCallback, model_loss

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    l2 = keras.regularizers.L2(1e-2)

    def build():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh", kernel_regularizer=l2, name="h"),
            keras.layers.Dense(3, name="o"),
        ], name="m")
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
        return model

    def run(model, scope, log):
        # directions=0: coordinates only, each probed on its own, so every tensor names a
        # worst element whose analytic value can be compared (a screened check clears
        # tensors jointly and names none).
        cb = GradCheckCallback(
            (x[:16], y[:16]), every=1, max_checks=2, seed=5, log_file=log, directions=0
        )
        with scope:
            model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
        first = cb.reports[0]
        return {
            "loss": first.loss,
            "analytic": [p.worst_analytic for p in first.params],
            "index": [p.worst_index for p in first.params],
            "passed": [r.passed for r in cb.reports],
            "steps": [json.loads(l)["step"] for l in open(log) if '"gradcheck"' in l],
            "variable": type(model.trainable_variables[0].value).__name__,
        }

    out = {"plain": run(build(), contextlib.nullcontext(), sys.argv[1] + "/plain.jsonl")}
    for where, scope in [("outside", contextlib.nullcontext()), ("inside", strategy.scope())]:
        with strategy.scope():
            model = build()
        out[where] = run(model, scope, sys.argv[1] + f"/{where}.jsonl")
    with strategy.scope():
        model = build()  # the weights of every first check
        out["keras_loss_in_scope"] = float(model_loss(model, x[:16], y[:16])())
        try:
            gg.check(model_loss(model, x[:16], y[:16]), model)
        except gg.InvalidParamsError as exc:
            out["check_in_scope"] = str(exc)
    print(json.dumps(out))
    """
)


def test_mirrored_strategy_checks_once_with_the_undistributed_loss(tmp_path: pathlib.Path) -> None:
    """Under MirroredStrategy (two logical CPUs), with fit called outside or inside
    strategy.scope(), each due step is checked once, and the first check's loss and
    analytic gradient equal those of an un-distributed copy of the model, not the loss
    Keras scales by 1/replicas in the scope; gradguard.check inside the scope is refused."""
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    plain = out["plain"]
    assert plain["variable"] == "ResourceVariable"
    for where in ("outside", "inside"):
        run = out[where]
        assert run["variable"] == "MirroredVariable"
        assert run["steps"] == [0, 1] and run["passed"] == [True, True]
        assert run["loss"] == pytest.approx(plain["loss"], rel=1e-12)
        assert run["index"] == plain["index"]
        assert None not in plain["analytic"]
        assert run["analytic"] == pytest.approx(plain["analytic"], rel=1e-10)
    # The value the check avoided: Keras' loss in the scope is scaled by 1/2 (two replicas).
    assert out["keras_loss_in_scope"] == pytest.approx(plain["loss"] / 2, rel=1e-6)
    assert "outside the scope" in out["check_in_scope"]


# -- the example ----------------------------------------------------------------------------------


def _run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_keras_callback_example_catches_the_bug_and_trains_the_fix(tmp_path: pathlib.Path) -> None:
    """The example's buggy custom gradient is caught at the first check and the upstream
    layer's variables are named; the fixed model trains to the end, the callback switching
    itself off after 3 passing checks; every check is in the log."""
    log = tmp_path / "keras.jsonl"
    out = _run_example("keras_callback.py", "--log", str(log))
    assert "FAILED, 2 of 6 tensors wrong: buggy/hidden/kernel, buggy/hidden/bias" in out
    assert "switched itself off after 3 passing checks" in out
    found = records(log)
    assert [r["event"] for r in found].count("gradcheck") == 4
    assert found[-1]["event"] == "guard_disabled" and found[-1]["reason"] == "passed"


def test_figures_reach_the_epoch_logs_and_keras_tensorboard(tmp_path: pathlib.Path) -> None:
    """Each epoch with a check gets its last check's figures in ``logs``: History has them, and
    Keras' TensorBoard callback (listed after) writes them as ``epoch_gradcheck/...``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = GradCheckCallback(probe=(X[:8], Y[:8]), every=3, max_checks=2, seed=0)
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path), write_graph=False)
    history = fit(mlp(), [callback, board], epochs=3)  # 4 steps an epoch: both in epoch 0
    second = callback.reports[1]  # epoch 0's last check
    assert history.history["gradcheck/difference"] == [second.difference]
    assert history.history["gradcheck/failed"] == [0.0]
    assert history.history["gradcheck/difference/mlp/h/kernel"] == [
        second["mlp/h/kernel"].difference
    ]
    accumulator = EventAccumulator(str(tmp_path / "train"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["tensors"])
    assert {"epoch_gradcheck/difference", "epoch_gradcheck/failed"} <= tags
    assert "epoch_gradcheck/difference/mlp/out/bias" in tags
    (event,) = accumulator.Tensors("epoch_gradcheck/difference")
    assert event.step == 0
    assert float(tf.make_ndarray(event.tensor_proto)) == pytest.approx(second.difference, rel=1e-6)
