"""The PyTorch zoo (tests/zoo/torch_models.py): bugs caught and localized, correct models pass.

Every case is checked with ``gg.check(loss, model)`` and no ``grad`` (autograd), in train mode,
with several seeds, so that the sampling of coordinates and directions is not what makes the
verdict right; after every check the state_dict and the global RNG state are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import gradguard as gg
from zoo import torch_models

CASES = torch_models.all_cases()

# The models here are tiny: one intra-op thread is as fast, and keeps OpenMP from spinning
# against whatever else runs on the machine's other core (seen: 100x slower evaluations).
torch.set_num_threads(1)
SEEDS = (0, 1, 2)


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    """Every parameter and buffer of the model, as raw bytes (bit-exact comparison)."""
    return {
        name: value.detach().cpu().numpy().tobytes() for name, value in model.state_dict().items()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zoo_case_fails_on_exactly_the_corrupted_parameters(case: torch_models.Case) -> None:
    """A correct model passes; a planted bug fails on exactly the parameters it corrupts.

    float32 models included: they are evaluated in a float64 shadow, which is what lets the
    0.1% scale error in a float32 custom Function be seen at all.
    """
    model, loss = case.build()
    for seed in SEEDS:
        before, rng = state_bytes(model), torch.get_rng_state()
        report = gg.check(loss, model, seed=seed)
        assert set(report.failed) == set(case.corrupted), str(report)
        assert report.passed is (not case.corrupted)
        assert state_bytes(model) == before
        assert torch.equal(torch.get_rng_state(), rng)
        assert report.dtype == "float64"
        assert {p.dtype for p in report.params} == {str(case.dtype).removeprefix("torch.")}


BUGS = [c for c in CASES if c.corrupted]


@pytest.mark.parametrize("case", BUGS, ids=[c.name for c in BUGS])
def test_zoo_bug_hint_matches_the_kind_of_bug(case: torch_models.Case) -> None:
    """Each failing parameter names an element whose analytic and numeric values disagree,
    and the hint fits the bug: a factor for the scale error, ~0 for the detached branch."""
    model, loss = case.build()
    report = gg.check(loss, model, seed=0)
    for name in case.corrupted:
        param = report[name]
        assert param.worst_analytic is not None and param.worst_numeric is not None
        assert param.worst_analytic != pytest.approx(param.worst_numeric, rel=1e-5, abs=1e-12)
    if case.bug == "scale_0.1pct":
        assert "1.001 x numeric" in report["out.weight"].hint
    if case.bug == "detached_branch":
        assert "detached" in report["branch.weight"].hint
        assert report.notes["no_gradient"] == "branch.weight, branch.bias"


def _interrupting(
    loss: Callable[[Any], Any], after: int, error: BaseException
) -> Callable[..., Any]:
    """``loss``, raising ``error`` on its ``after``-th call (mid-check, parameters perturbed)."""
    calls = [0]

    def wrapped(model: Any) -> Any:
        calls[0] += 1
        if calls[0] == after:
            raise error
        return loss(model)

    return wrapped


INTERRUPTED = [c for c in CASES if c.name in {"conv_bn_dropout_32", "conv_bn_dropout_64", "gru_64"}]


@pytest.mark.parametrize("case", INTERRUPTED, ids=[c.name for c in INTERRUPTED])
@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"]
)
def test_state_is_bit_identical_when_the_loss_raises_midway(
    case: torch_models.Case, error: BaseException
) -> None:
    """A loss that raises (or a Ctrl-C) mid-check leaves parameters, BatchNorm statistics and
    the RNG exactly as they were (float64 models are perturbed in place; float32 in a shadow)."""
    model, loss = case.build()
    before, rng = state_bytes(model), torch.get_rng_state()
    with pytest.raises(type(error)):
        gg.check(_interrupting(loss, 7, error), model, seed=0)
    assert state_bytes(model) == before
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_default_dtype() == torch.float32
