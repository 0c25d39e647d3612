"""gradguard.Guard: schedule, self-disabling, failure modes, coverage, logs, ranks."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import gradguard as gg
from gradguard import plugins
from gradguard.guard import DISABLE_ENV, Schedule


class Model:
    """A tiny tanh regression with a hand-written gradient; counts loss evaluations."""

    def __init__(self, bug: float = 1.0) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((12, 6))
        self.y = rng.standard_normal((12, 3))
        self.params = {"W": rng.standard_normal((6, 3)), "b": rng.standard_normal(3)}
        self.bug = bug
        self.evaluations = 0

    def loss(self, p: dict[str, np.ndarray]) -> float:
        self.evaluations += 1
        return float(np.mean((np.tanh(self.x @ p["W"] + p["b"]) - self.y) ** 2))

    def grad(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a = np.tanh(self.x @ p["W"] + p["b"])
        dz = 2 * (a - self.y) / a.size * (1 - a**2)
        return {"W": self.x.T @ dz * self.bug, "b": dz.sum(axis=0)}

    def guard(self, **options: object) -> gg.Guard:
        return gg.Guard(self.loss, self.params, self.grad, **options)  # type: ignore[arg-type]


def _checked_steps(guard: gg.Guard, steps: int) -> list[int]:
    return [i for i in range(steps) if guard.step() is not None]


def test_checks_every_k_steps_from_start() -> None:
    """Checks happen at start, start+every, ...; other steps return None."""
    model = Model()
    guard = model.guard(every=4, start=2, max_checks=None)
    assert _checked_steps(guard, 15) == [2, 6, 10, 14]
    assert len(guard.reports) == 4 and guard.steps == 15


def test_schedule_due() -> None:
    """Schedule.due is the rule the guard and the Keras callback share."""
    schedule = Schedule(every=3, start=1, max_checks=None)
    assert [s for s in range(10) if schedule.due(s)] == [1, 4, 7]


def test_switches_itself_off_after_max_checks_passing_checks(tmp_path: pathlib.Path) -> None:
    """After max_checks passes the guard is inactive, logs why, and never evaluates again."""
    model = Model()
    log = tmp_path / "g.jsonl"
    guard = model.guard(every=2, max_checks=2, log_file=log)
    assert _checked_steps(guard, 10) == [0, 2]
    assert not guard.active
    evaluations = model.evaluations
    assert all(guard.step() is None for _ in range(20))
    assert model.evaluations == evaluations
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event"] for r in records] == ["gradcheck", "gradcheck", "guard_disabled"]
    assert records[-1]["reason"] == "passed" and records[-1]["step"] == 2
    assert {r["run_id"] for r in records} == {guard.run_id}
    assert [r["step"] for r in records[:2]] == [0, 2]


def test_environment_switch_makes_the_guard_inert(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRADGUARD_DISABLE=1: the loss is never evaluated and step() returns None."""
    monkeypatch.setenv(DISABLE_ENV, "1")
    model = Model()
    guard = model.guard(every=1)
    assert not guard.active
    assert all(guard.step() is None for _ in range(5))
    assert model.evaluations == 0


def test_environment_switch_is_read_when_the_guard_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GRADGUARD_DISABLE set after a guard was built does not stop it (documented: the switch is
    read once, at construction); guard.disable() is the way to stop a running guard."""
    model = Model()
    guard = model.guard(every=1, max_checks=None)
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert guard.active and guard.step() is not None
    guard.disable()
    assert not guard.active and guard.step() is None


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_environment_switch_off_values_keep_the_guard(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """GRADGUARD_DISABLE=0 (or empty, or false) leaves guards enabled."""
    monkeypatch.setenv(DISABLE_ENV, value)
    assert Model().guard().active


def test_on_failure_stop_is_the_default() -> None:
    """By default a failing check warns that training stops, and sets guard.should_stop."""
    guard = Model(bug=1.01).guard(every=1)
    assert guard.on_failure == "stop" and not guard.should_stop
    with pytest.warns(gg.GradientCheckWarning, match=r"stopped training at step 0.*\n.*FAILED"):
        report = guard.step()
    assert report is not None and report.failed == ("W",)
    assert guard.should_stop and guard.active


def test_on_failure_raise() -> None:
    """on_failure='raise' raises GradientCheckError with the report naming the tensor."""
    guard = Model(bug=1.01).guard(every=1, on_failure="raise")
    with pytest.raises(gg.GradientCheckError, match="W") as caught:
        guard.step()
    assert caught.value.report.failed == ("W",)  # type: ignore[attr-defined]
    assert guard.active


def test_on_failure_warn() -> None:
    """on_failure='warn' warns with the readable table and keeps checking."""
    guard = Model(bug=1.01).guard(every=1, on_failure="warn")
    with pytest.warns(gg.GradientCheckWarning, match=r"FAILED, 1 of 2 tensors wrong: W"):
        report = guard.step()
    assert report is not None and not report.passed
    assert guard.active


def test_on_failure_log(tmp_path: pathlib.Path, recwarn: pytest.WarningsRecorder) -> None:
    """on_failure='log' only logs: no exception, no warning, every failure recorded."""
    log = tmp_path / "g.jsonl"
    guard = Model(bug=1.01).guard(every=1, max_checks=1, on_failure="log", log_file=log)
    reports = [guard.step() for _ in range(3)]
    assert all(r is not None and not r.passed for r in reports)
    assert guard.active  # failing checks never switch it off
    assert not [w for w in recwarn if issubclass(w.category, gg.GradientCheckWarning)]
    assert len(log.read_text().splitlines()) == 3


def test_a_check_that_cannot_run_always_raises() -> None:
    """Bad input raises its GradGuardError even with on_failure='log'; the guard stays on."""
    model = Model()
    guard = gg.Guard(model.loss, model.params, lambda p: {"W": p["W"]}, on_failure="log")
    with pytest.raises(gg.GradientError, match="missing keys"):
        guard.step()
    assert guard.active


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"every": 0}, "every"),
        ({"start": -1}, "start"),
        ({"max_checks": 0}, "max_checks"),
        ({"on_failure": "explode"}, "on_failure"),
        ({"on_failure": "error"}, "'stop', 'raise', 'warn', 'log'"),
        ({"tensors_per_check": 0}, "tensors_per_check"),
        ({"eps": -1.0}, "eps"),
        ({"sampel": 3}, "unknown Guard option"),
        ({"log_file": 123}, "log_file must be a path .* got int 123"),
        ({"log_file": b"gc.jsonl"}, "log_file must be a path .* got bytes"),
        ({"log_file": ""}, "log_file is an empty string"),
    ],
)
def test_bad_options_raise_at_construction(options: dict[str, object], match: str) -> None:
    """Out-of-range options fail when the guard is built, not in the middle of training."""
    with pytest.raises(gg.SettingsError, match=match):
        Model().guard(**options)


def test_successive_checks_cover_new_coordinates() -> None:
    """Coordinates are not probed twice until every one has been; coverage grows."""
    model = Model()
    guard = model.guard(every=1, max_checks=None, sample=6, directions=0, seed=3)
    coverages = [guard.step().coverage for _ in range(3)]  # type: ignore[union-attr]
    assert coverages == pytest.approx([6 / 21, 12 / 21, 18 / 21])
    assert guard.step().coverage == 1.0  # type: ignore[union-attr]


def test_tensors_per_check_rotates_over_the_tensors() -> None:
    """With tensors_per_check=1 each check covers the next tensor."""
    guard = Model().guard(every=1, max_checks=None, tensors_per_check=1)
    assert [guard.step().names for _ in range(4)] == [("W",), ("b",), ("W",), ("b",)]  # type: ignore[union-attr]


def test_checks_have_distinct_reproducible_seeds() -> None:
    """Each check gets its own seed, derived from the guard's seed, and replays with it."""
    model = Model()
    a = model.guard(every=1, max_checks=None, seed=11)
    b = model.guard(every=1, max_checks=None, seed=11)
    seeds_a = [a.step().seed for _ in range(3)]  # type: ignore[union-attr]
    seeds_b = [b.step().seed for _ in range(3)]  # type: ignore[union-attr]
    assert seeds_a == seeds_b and len(set(seeds_a)) == 3


def test_explicit_step_numbers_follow_the_loop() -> None:
    """step(n) uses the loop's own count, e.g. after resuming training at step 1000."""
    guard = Model().guard(every=100, max_checks=None)
    assert guard.step(1000) is not None
    assert guard.step(1001) is None
    assert guard.step() is None  # continues from 1002
    assert guard.steps == 1003


def test_training_with_a_guard_is_bit_identical() -> None:
    """SGD with a guard checking every step gives the same weights as without one."""

    def train(with_guard: bool) -> dict[str, np.ndarray]:
        model = Model()
        guard = model.guard(every=1, max_checks=None) if with_guard else None
        np.random.seed(5)
        for _ in range(6):
            grads = model.grad(model.params)
            for name in grads:
                model.params[name] -= 0.5 * grads[name] + 1e-3 * np.random.standard_normal()
            if guard is not None:
                guard.step()
        return model.params

    guarded, plain = train(True), train(False)
    assert all(guarded[k].tobytes() == plain[k].tobytes() for k in guarded)


def test_disable_by_hand_is_logged(tmp_path: pathlib.Path) -> None:
    """disable() switches the guard off with reason 'user', once."""
    log = tmp_path / "g.jsonl"
    guard = Model().guard(log_file=log)
    guard.disable()
    guard.disable()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["event"], r["reason"]) for r in records] == [("guard_disabled", "user")]


def test_only_rank_zero_checks_by_default() -> None:
    """A process whose distributed rank is not selected goes quiet at its first step."""

    class RankOne:
        @gg.hookimpl
        def gradguard_distributed_rank(self, params: object) -> int:
            return 1

    gg.register(RankOne(), name="rank-one")
    try:
        model = Model()
        quiet = model.guard(every=1)
        assert quiet.step() is None and not quiet.active
        assert model.evaluations == 0
        assert model.guard(every=1, ranks=(1,)).step() is not None
        assert model.guard(every=1, ranks="all").step() is not None
    finally:
        plugins.unregister("rank-one")


def test_guard_reports_go_through_the_reporter_hook() -> None:
    """Every check of a guard reaches gradguard_check_completed with its step and run id."""
    seen: list[tuple[str, int | None, str | None]] = []

    class Spy:
        @gg.hookimpl
        def gradguard_check_completed(
            self, report: gg.CheckReport, context: gg.CheckContext
        ) -> None:
            seen.append((context.source, context.step, context.run_id))

    gg.register(Spy(), name="spy")
    try:
        guard = Model().guard(every=3, max_checks=2)
        _checked_steps(guard, 7)
    finally:
        plugins.unregister("spy")
    assert seen == [("guard", 0, guard.run_id), ("guard", 3, guard.run_id)]


def test_a_loss_that_is_not_a_callable_is_a_loss_error() -> None:
    """Guard(loss=...) refuses a non-callable with the LossError check() gives, not another type."""
    model = Model()
    with pytest.raises(gg.LossError, match=r"loss must be a callable loss\(params\)"):
        gg.Guard(model.loss(model.params), model.params, model.grad)  # type: ignore[arg-type]
    with pytest.raises(gg.LossError, match=r"loss must be a callable loss\(params\)"):
        gg.check(model.loss(model.params), model.params, model.grad)  # type: ignore[arg-type]


def test_state_dict_resumes_the_run() -> None:
    """A guard given another's state_dict goes on as that one would have: same steps,
    seeds, coverage, run id and max_checks count as one uninterrupted guard."""
    model = Model()
    options = {"every": 2, "max_checks": 4, "sample": 3, "directions": 1, "seed": 7}
    whole = model.guard(**options)
    first = model.guard(**options)
    [whole.step() for _ in range(4)]
    [first.step() for _ in range(4)]
    state = first.state_dict()
    json.dumps(state)  # a checkpoint may be JSON
    second = model.guard(**options)
    second.load_state_dict(state)
    assert second.run_id == first.run_id and second.steps == 4
    later = [second.step() for _ in range(6)]
    expected = [whole.step() for _ in range(6)]
    assert (
        [r is None for r in later]
        == [r is None for r in expected]
        == [False, True, False, True, True, True]
    )
    pairs = [(a, b) for a, b in zip(later, expected, strict=True) if a is not None]
    assert [a.seed for a, _ in pairs] == [b.seed for _, b in pairs]  # type: ignore[union-attr]
    assert [a.coverage for a, _ in pairs] == [b.coverage for _, b in pairs]  # type: ignore[union-attr]
    assert not second.active and not whole.active  # 2 + 2 passing checks: max_checks


def test_load_state_dict_refuses_something_else() -> None:
    """load_state_dict names what it needs when given another object."""
    with pytest.raises(gg.SettingsError, match="state_dict"):
        Model().guard().load_state_dict({"steps": 3})
