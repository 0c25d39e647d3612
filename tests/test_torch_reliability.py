"""PyTorch: a check leaves nothing behind, under Ctrl-C, threads, closures and module-owned state.

Real torch on CPU, real SIGINTs, real threads.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from interrupts import in_clean_process, sigint_trials
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradguard as gg
from gradguard import errors

torch.set_num_threads(1)  # tiny models: one intra-op thread is as fast, and spins less


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    """Every parameter and buffer, as raw bytes (bit-exact comparison)."""
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 5, generator=generator), torch.randn(16, 2, generator=generator)


def _bn_net(dtype: torch.dtype, momentum: float | None = 0.1) -> nn.Module:
    """Linear -> BatchNorm (train mode) -> tanh -> Dropout -> Linear, fixed initialization."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Linear(5, 8),
            nn.BatchNorm1d(8, momentum=momentum),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Linear(8, 2),
        ).to(dtype)


def _globals() -> tuple[Any, ...]:
    """Everything process-wide a torch check touches, in comparable form."""
    numpy_state = np.random.get_state()
    return (
        torch.get_rng_state().numpy().tobytes(),
        torch.get_default_dtype(),
        torch.zeros(1).dtype,  # a Float64Mode left on the stack would make this float64
        torch.ones(1, dtype=torch.float32).dtype,
        torch.is_grad_enabled(),
        numpy_state[1].tobytes(),
        numpy_state[2:],
        random.getstate(),
    )


# -- Ctrl-C at any moment ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["shadow", "in_place"])
@in_clean_process
def test_real_sigints_at_random_moments_leave_model_and_modes_whole(dtype: torch.dtype) -> None:
    """A float32 model (float64 shadow, Float64Mode per evaluation) and a float64 model
    (perturbed in place), each checked over and over with one real SIGINT at a random moment:
    parameters, BatchNorm statistics, RNGs, default dtype, function modes and grad mode are
    bit-identical every time, and every Ctrl-C reaches the caller as KeyboardInterrupt."""
    model = _bn_net(dtype)
    x, y = (t.to(dtype) for t in _batch())

    def loss(m: nn.Module) -> torch.Tensor:
        np.random.normal()  # a draw from NumPy's global stream, which must be put back
        return F.mse_loss(m(x), y)

    trials = sigint_trials(
        lambda: gg.check(loss, model, seed=0, sample=4, directions=1),
        lambda: (state_bytes(model), _globals()),
        trials=120,
        seed=1,
        budget_s=8.0 if dtype == torch.float32 else 5.0,
    )
    assert trials.changed == []
    assert trials.lost == 0 and trials.stray == 0
    assert trials.ran >= 30 and trials.interrupted >= trials.ran // 5, trials


@in_clean_process
def test_real_sigints_leave_requires_grad_flags_of_tensors_whole() -> None:
    """Tensors passed without requires_grad get it switched on for the gradient and off
    again, all or none, whenever the Ctrl-C comes."""
    generator = torch.Generator().manual_seed(2)
    params = {"w": torch.randn(5, 3, generator=generator, dtype=torch.float64)}
    x = torch.randn(8, 5, generator=generator, dtype=torch.float64)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tanh(x @ p["w"]).square().sum()

    trials = sigint_trials(
        lambda: gg.check(loss, params, seed=0, sample=20, directions=2),
        lambda: (params["w"].numpy().tobytes(), params["w"].requires_grad, _globals()),
        trials=120,
        seed=2,
        budget_s=8.0,
    )
    assert trials.changed == [] and trials.lost == 0 and trials.stray == 0
    assert trials.interrupted >= trials.ran // 5, trials


# -- a check leaves nothing behind ------------------------------------------------------------


def test_a_loss_closing_over_the_module_leaves_its_batchnorm_untouched() -> None:
    """`lambda mm: F.mse_loss(m(x), y)` runs the user's module in train mode: the check
    still ends with num_batches_tracked and the running statistics as they were."""
    m = _bn_net(torch.float32)
    x, y = _batch()
    before = state_bytes(m)
    report = gg.check(lambda mm: F.mse_loss(m(x), y), m, seed=0)
    assert report.passed, str(report)
    assert "does not use the module" in report.notes["evaluation"]
    assert state_bytes(m) == before
    assert int(m[1].num_batches_tracked) == 0


def test_a_guard_with_a_closure_loss_trains_bit_identically() -> None:
    """momentum=None BatchNorm (a cumulative average of every batch seen): a training loop
    with a Guard whose loss closes over the model ends bit-identical to one without it."""
    x, y = _batch()

    def train(with_guard: bool) -> dict[str, bytes]:
        model = _bn_net(torch.float32, momentum=None)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        guard = gg.Guard(lambda mm: F.mse_loss(model(x), y), model, every=1, max_checks=None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            for _ in range(3):
                optimizer.zero_grad()
                F.mse_loss(model(x), y).backward()
                if with_guard:
                    guard.step()
                optimizer.step()
        return state_bytes(model)

    assert train(with_guard=True) == train(with_guard=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["shadow", "in_place"])
def test_a_stray_in_place_update_through_a_closure_is_undone(dtype: torch.dtype) -> None:
    """A loss that also writes to the user's weight through its closure: in a shadow check
    and an in-place check alike, the weight ends bit-identical."""
    m = nn.Linear(5, 2).to(dtype)
    x, y = (t.to(dtype) for t in _batch())
    before = state_bytes(m)

    def loss(mm: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            m.weight.mul_(1.0001)  # a stray update of the user's own tensor
        return F.mse_loss(mm(x), y)

    gg.check(loss, m, seed=0)
    assert state_bytes(m) == before


def test_numpy_and_python_random_states_are_put_back() -> None:
    """A loss drawing from np.random and from random changes neither stream for the caller."""
    m = nn.Linear(5, 2).double()
    x, y = (t.double() for t in _batch())

    def loss(mm: nn.Module) -> torch.Tensor:
        return F.mse_loss(mm(x), y) + 0.0 * float(np.random.rand() + random.random())

    before = _globals()
    gg.check(loss, m, seed=0)
    assert _globals() == before


class _NoisyModule(nn.Module):
    """Adds noise drawn from a generator the module owns (its own, not the global one)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 2)
        self.gen = torch.Generator().manual_seed(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
        return self.lin(x + 0.1 * noise)  # type: ignore[no-any-return]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["shadow", "in_place"])
def test_a_module_owned_generator_is_replayed_not_called_nondeterministic(
    dtype: torch.dtype,
) -> None:
    """Each evaluation starts from the generator's state at the start of the check: the
    check passes (no 'nondeterministic'), and the generator's state is left unchanged."""
    m = _NoisyModule().to(dtype)
    x, y = (t.to(dtype) for t in _batch())
    state = m.gen.get_state()
    report = gg.check(lambda mm: F.mse_loss(mm(x), y), m, seed=0)
    assert report.passed, str(report)
    assert torch.equal(m.gen.get_state(), state)


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        h = checkpoint(self.block, h, use_reentrant=self.reentrant)
        return self.c(h)  # type: ignore[no-any-return]

    def block(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.b(h))


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["shadow", "in_place"])
def test_reentrant_activation_checkpointing_is_checked(dtype: torch.dtype) -> None:
    """torch.utils.checkpoint(use_reentrant=True) refuses torch.autograd.grad; the check
    differentiates it with .backward() as training does, and every .grad is left as it was."""
    m = _Checkpointed(reentrant=True).to(dtype)
    x, y = (t.to(dtype) for t in _batch())
    F.mse_loss(m(x), y).backward()  # .grad fields from a training step, kept as they are
    grads = [p.grad.clone() for p in m.parameters()]  # type: ignore[union-attr]
    before = state_bytes(m)
    report = gg.check(lambda mm: F.mse_loss(mm(x), y), m, seed=0)
    assert report.passed, str(report)
    assert state_bytes(m) == before
    assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads, strict=True))


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_reentrant_checkpointing_over_tensors_names_the_fix() -> None:
    """Tensors passed directly, with a reentrant checkpoint in the loss: a GradientError
    naming use_reentrant=False or passing the module."""
    m = _Checkpointed(reentrant=True).double()
    x, y = (t.double() for t in _batch())
    with pytest.raises(errors.GradientError, match="use_reentrant=False"):
        gg.check(lambda p: F.mse_loss(m(x), y), [m.a.weight, m.b.weight], seed=0)


# -- two threads ---------------------------------------------------------------------------


def _two_threads(work: Any, rounds: int) -> list[BaseException]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(rounds):
                work()
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return failures


def test_two_threads_checking_one_model_in_place_never_corrupt_it() -> None:
    """Two threads checking the same float64 model (perturbed in place) over and over: the
    checks take turns, the model ends bit-identical and every check passes."""
    m = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x, y = (t.double() for t in _batch())
    before = state_bytes(m)
    reports: list[gg.CheckReport] = []

    def work() -> None:
        reports.append(gg.check(lambda mm: F.mse_loss(mm(x), y), m, seed=0, sample=16))

    assert _two_threads(work, rounds=25) == []
    assert state_bytes(m) == before
    assert len(reports) == 50 and all(r.passed for r in reports)


def test_a_check_of_a_model_and_one_of_its_parameters_take_turns() -> None:
    """The model, and a list of one of its parameters, are the same memory: their checks
    from two threads never interleave either."""
    m = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x, y = (t.double() for t in _batch())
    before = state_bytes(m)
    turn = iter(range(10**6))

    def work() -> None:
        if next(turn) % 2:
            gg.check(lambda mm: F.mse_loss(mm(x), y), m, seed=0, sample=16).raise_for_failure()
        else:
            params = [m[0].weight]
            gg.check(lambda p: F.mse_loss(m(x), y), params, seed=0).raise_for_failure()

    assert _two_threads(work, rounds=20) == []
    assert state_bytes(m) == before


def test_a_check_inside_a_check_of_the_same_model_is_refused() -> None:
    """A loss that checks its own module cannot wait for itself: ConcurrentCheckError."""
    m = nn.Linear(5, 2).double()
    x, y = (t.double() for t in _batch())

    def loss(mm: nn.Module) -> torch.Tensor:
        gg.check(lambda inner: F.mse_loss(inner(x), y), m, seed=0)
        return F.mse_loss(mm(x), y)

    before = state_bytes(m)
    with pytest.raises(gg.ConcurrentCheckError, match="already running in this thread"):
        gg.check(loss, m, seed=0)
    assert state_bytes(m) == before


def test_the_private_torch_apis_the_adapter_uses_exist() -> None:
    """_compat's private torch APIs behave as the adapter needs: the mode stack can be read,
    and a stash of torch's handle_torch_function cut short (mode popped, push pending) is
    finished by closing it, so leaving Float64Mode removes the mode for good."""
    from gradguard_torch._compat import close_interrupted_mode_stashes, function_modes
    from gradguard_torch._precision import Float64Mode

    assert function_modes() == []
    mode = Float64Mode()
    with pytest.raises(KeyboardInterrupt), mode:
        assert function_modes() == [mode]
        stash = torch.overrides._pop_mode_temporarily()
        stash.__enter__()  # the mode popped; the push waits in the suspended generator
        assert function_modes() == []

        def cut_short(self: Any) -> None:  # a frame holding the stash, as contextlib's
            raise KeyboardInterrupt

        cut_short(stash)
    assert function_modes() == [] and torch.get_default_dtype() == torch.float32
    assert stash.gen.gi_frame is None  # closed: no push left for the garbage collector
    close_interrupted_mode_stashes(None)  # nothing to do without a traceback
