"""Sharded models (FSDP2, tensor parallel, both on a 2-D mesh), checked collectively.

Real process groups (gloo, CPU, ``torch.multiprocessing`` spawn), each run under a hard
deadline. Every rank writes what it saw to a JSON file; the assertions run in the test process.
A planted bug (one row of a custom Function's weight gradient doubled, :mod:`tests.zoo.
sharded_models`) must be caught in exactly the wrong tensor and localized to its row, with the
rank that owns it; the correct twin must pass; the verdict and per-tensor differences must
equal those of the same check of the unsharded model (same weights, same seed); the local
shards and ``.grad`` fields must be bit-identical afterwards; and a rank whose loss raises must
make every rank raise a ShardedLossError naming it, without hanging.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from gloo_group import join_gloo  # noqa: E402
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor.parallel import (  # noqa: E402
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

import gradguard as gg  # noqa: E402
from gradguard_torch import ShardedLossError  # noqa: E402
from tests.zoo import sharded_models as zoo  # noqa: E402

DEADLINE_S = 300  # a hang guard: these runs take 20-90 s on a loaded 2-core machine
# The timeout of the group a model's collectives run on in the failure test: bounds how long a
# rank blocked inside them waits for a rank whose loss raised before its forward. The default
# group keeps a generous timeout, so that a slow rank on a loaded machine is not a failure.
MODEL_GROUP_TIMEOUT_S = 4


def _run_example(name: str) -> str:
    example = pathlib.Path(__file__).resolve().parents[1] / "examples" / name
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _spawn(worker: Callable[..., None], world: int, out: pathlib.Path) -> list[dict[str, Any]]:
    context = mp.start_processes(
        worker, args=(world, str(out)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world}-rank run did not finish in {DEADLINE_S} s (a hang?)")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _comparable(report: gg.CheckReport) -> dict[str, Any]:
    """A report's record without what legitimately differs between ranks and runs."""
    record = report.to_dict()
    for key in ("duration_s",):
        record.pop(key, None)
    return record


def _summary(report: gg.CheckReport) -> dict[str, Any]:
    return {
        "status": report.status.value,
        "failed": [p.name for p in report.params if not p.passed],
        "params": {
            p.name: [p.status.value, p.difference, list(p.worst_index or ())] for p in report.params
        },
        "worst_owners": {p.name: p.worst_owners for p in report.params},
        "owners": report.notes.get("owners"),
        "record": _comparable(report),
    }


def _local(p: Any) -> Any:
    """A parameter's local shard (a plain parameter of a TP model is its own)."""
    return p.to_local() if hasattr(p, "to_local") else p.detach()


def _shards(model: Any) -> list[Any]:
    with torch.no_grad():
        return [_local(p).clone() for p in model.parameters()]


def _same(before: list[Any], model: Any) -> bool:
    with torch.no_grad():
        return all(
            torch.equal(a, _local(p)) for a, p in zip(before, model.parameters(), strict=True)
        )


def _fsdp(model: Any, mesh: Any) -> Any:
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _check_pair(
    bug: str | None,
    shard: Callable[[Any], Any],
    *,
    dtype: Any = torch.float64,
    seed: int = 5,
    strategy: str = "per-tensor",
    zero_features: int = 0,
) -> dict[str, Any]:
    """The sharded check and the unsharded one (same weights, data and seed), summarized.

    ``zero_features`` zeroes the first input features: the first layer's gradient is then zero
    in those columns, and coordinates are drawn half among its non-zero entries.
    """
    x, y = zoo.data(dtype)
    x[:, :zero_features] = 0.0
    model = shard(zoo.build(bug, dtype))
    before = _shards(model)
    sentinel = [torch.zeros_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), sentinel, strict=True):
        p.grad = g
    sharded = gg.check(zoo.loss_fn(x, y), model, seed=seed, strategy=strategy)
    grads_back = all(p.grad is g for p, g in zip(model.parameters(), sentinel, strict=True))
    reference = gg.check(
        zoo.loss_fn(x, y), zoo.build(bug, dtype).double(), seed=seed, strategy=strategy
    )
    return {
        "sharded": _summary(sharded),
        "unsharded": _summary(reference),
        "restored": _same(before, model) and grads_back,
    }


# -- 2 ranks: FSDP2 --------------------------------------------------------------------------


class _RaisesOnRank:
    """A loss that raises on one rank at its n-th call, before or after the forward (or NaN)."""

    def __init__(self, rank: int, at_call: int, before_forward: bool, nan: bool = False) -> None:
        self.rank, self.at_call, self.before_forward = rank, at_call, before_forward
        self.nan = nan
        self.calls = 0
        self.x, self.y = zoo.data()

    def __call__(self, model: Any) -> Any:
        self.calls += 1
        failing = dist.get_rank() == self.rank and self.calls == self.at_call
        if failing and self.before_forward:
            raise ValueError("no data on this rank")
        out = model(self.x)
        if failing and self.nan:
            return torch.nn.functional.mse_loss(out, self.y) * float("nan")
        if failing:
            raise ValueError("a NaN in the labels")
        return torch.nn.functional.mse_loss(out, self.y)


def _failure(model: Any, loss: _RaisesOnRank) -> dict[str, Any]:
    before = _shards(model)
    started = time.monotonic()
    try:
        gg.check(loss, model, seed=1)
    except ShardedLossError as exc:
        error: dict[str, Any] = {"type": "ShardedLossError", "message": str(exc)}
        error["ranks"] = list(exc.ranks)
    except BaseException as exc:  # anything else is a failure of the test
        error = {"type": type(exc).__name__, "message": str(exc)}
    error["seconds"] = time.monotonic() - started
    error["restored"] = _same(before, model)
    return error


def _lightning_checks(mesh: Any) -> list[str]:
    """The callback's hooks called as ``trainer.fit`` would, on an FSDP2-sharded module.

    Lightning's own FSDP2 strategy (``ModelParallelStrategy``) needs GPUs; the module is
    sharded by hand, the way that strategy's ``configure_model`` does it.
    """
    import lightning

    from gradguard_torch.lightning import GradCheckCallback

    class Regressor(lightning.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = _fsdp(zoo.build("2"), mesh)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("loss", loss)
            return loss

    module = Regressor()
    callback = GradCheckCallback(probe=zoo.data(), every=1, max_checks=None, on_failure="log")
    trainer = lightning.Trainer(accelerator="cpu", devices=1, logger=False)
    callback.on_train_start(trainer, module)
    for batch_idx in range(2):
        callback.on_train_batch_end(trainer, module, None, None, batch_idx)
    return [",".join(report.failed) for report in callback.reports]


def _fsdp_worker(rank: int, world: int, out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    join_gloo(rank, world, out, DEADLINE_S)
    mesh = init_device_mesh("cpu", (world,))
    result: dict[str, Any] = {}
    result["correct"] = _check_pair(None, lambda m: _fsdp(m, mesh))
    result["buggy"] = _check_pair("2", lambda m: _fsdp(m, mesh))
    # Joint screening: a joint probe writes every rank's shards; g . v is a local dot product
    # and one all-reduce.
    result["correct_screen"] = _check_pair(None, lambda m: _fsdp(m, mesh), strategy="screen")
    result["buggy_screen"] = _check_pair("2", lambda m: _fsdp(m, mesh), strategy="screen")
    result["sparse"] = _check_pair(None, lambda m: _fsdp(m, mesh), zero_features=2)
    # float32, evaluated in place in float32: no false alarm over seeds, and the bug is caught.
    result["float32_correct"] = [
        gg.check(
            zoo.loss_fn(*zoo.data(torch.float32)),
            _fsdp(zoo.build(None, torch.float32), mesh),
            seed=s,
        ).status.value
        for s in range(2)
    ]
    buggy32 = _fsdp(zoo.build("2", torch.float32), mesh)
    report32 = gg.check(zoo.loss_fn(*zoo.data(torch.float32)), buggy32, seed=0)
    result["float32_buggy"] = [p.name for p in report32.params if not p.passed]
    # Different data per rank: the loss is averaged, as FSDP2 averages the gradient.
    x, y = zoo.data(rank=rank)
    mixed = gg.check(zoo.loss_fn(x, y), _fsdp(zoo.build(None), mesh), seed=2)
    result["per_rank_data"] = mixed.status.value
    # A Guard with its default ranks (rank 0) checks on every rank for a sharded model.
    model = _fsdp(zoo.build("2"), mesh)
    guard = gg.Guard(zoo.loss_fn(*zoo.data()), model, every=1, on_failure="log", max_checks=2)
    for _ in range(2):
        guard.step()
    result["guard"] = [_comparable(r) for r in guard.reports]
    # The Lightning callback (a Guard inside) on a sharded LightningModule: every rank checks.
    result["lightning"] = _lightning_checks(mesh)
    # Loose DTensors are refused with the fix (pass the module).
    try:
        gg.check(zoo.loss_fn(*zoo.data()), dict(model.named_parameters()))
        result["loose"] = "accepted"
    except gg.InvalidParamsError as exc:
        result["loose"] = str(exc)
    # A rank's loss raises after its forward: every rank learns it at the next agreement.
    model = _fsdp(zoo.build(None), mesh)
    result["raise_after_forward"] = _failure(model, _RaisesOnRank(1, 3, before_forward=False))
    model = _fsdp(zoo.build(None), mesh)
    result["nan_on_one_rank"] = _failure(model, _RaisesOnRank(1, 3, False, nan=True))
    # Before its forward: the other rank is then blocked in an FSDP all-gather, until the
    # timeout of the model's group (its own here, so the default group stays usable).
    group = dist.new_group(timeout=datetime.timedelta(seconds=MODEL_GROUP_TIMEOUT_S))
    model = _fsdp(zoo.build(None), DeviceMesh.from_group(group, "cpu"))
    result["raise_before_forward"] = _failure(model, _RaisesOnRank(1, 3, before_forward=True))
    dist.barrier()
    dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def test_fsdp2_check_is_collective_exact_and_fails_on_every_rank(tmp_path: pathlib.Path) -> None:
    """2-rank FSDP2: caught and localized like unsharded, identical on ranks, restored, no hang."""
    results = _spawn(_fsdp_worker, 2, tmp_path)
    for result in results:
        for strategy in ("", "_screen"):
            correct, buggy = result["correct" + strategy], result["buggy" + strategy]
            assert correct["sharded"]["status"] == "pass" and correct["restored"]
            assert buggy["sharded"]["failed"] == ["2.weight"] and buggy["restored"]
            # The planted row (6) is found, and rank 1 holds it (rows 4-7 under Shard(0)).
            worst = buggy["sharded"]["params"]["2.weight"][2]
            assert worst[0] == 6
            assert f"2.weight[{worst[0]}, {worst[1]}]: rank 1" in buggy["sharded"]["owners"]
            assert buggy["sharded"]["worst_owners"]["2.weight"] == [1]
            assert set(buggy["unsharded"]["worst_owners"].values()) == {None}
            assert "worst_owners" not in buggy["unsharded"]["record"]["params"][0]
            for pair in (correct, buggy):  # the same verdict as the unsharded check
                assert pair["sharded"]["status"] == pair["unsharded"]["status"]
                for name, (status, difference, where) in pair["sharded"]["params"].items():
                    ref_status, ref_difference, ref_where = pair["unsharded"]["params"][name]
                    assert (status, where) == (ref_status, ref_where)
                    assert difference == pytest.approx(ref_difference, rel=1e-3, abs=1e-9)
        screened = result["correct_screen"]["sharded"]["record"]["notes"]
        assert screened["strategy"] == "screen"
        # A sparse gradient: the same coordinates drawn among its non-zero entries, by ranks
        # that each hold part of them.
        sparse = result["sparse"]
        assert "coordinates" in sparse["sharded"]["record"]["notes"]
        for name, (status, difference, where) in sparse["sharded"]["params"].items():
            ref_status, ref_difference, ref_where = sparse["unsharded"]["params"][name]
            assert (status, where) == (ref_status, ref_where)
            assert difference == pytest.approx(ref_difference, rel=1e-3, abs=1e-9)
        coordinates = [p["coordinates"] for p in sparse["sharded"]["record"]["params"]]
        assert coordinates == [p["coordinates"] for p in sparse["unsharded"]["record"]["params"]]
        assert result["float32_correct"] == ["pass"] * 2
        assert result["float32_buggy"] == ["2.weight"]
        assert result["per_rank_data"] == "pass"
        assert len(result["guard"]) == 2
        assert "collective over 2 ranks" in result["guard"][0]["notes"]["evaluation"]
        assert result["lightning"] == ["net.2.weight", "net.2.weight"]
        assert "pass the sharded module itself" in result["loose"]
        for case in ("raise_after_forward", "raise_before_forward"):
            error = result[case]
            assert error["type"] == "ShardedLossError", error
            assert "rank 1 of 2" in error["message"] and error["ranks"][0] == 1
            assert error["restored"]
        assert "a NaN in the labels" in result["raise_after_forward"]["message"]
        nan = result["nan_on_one_rank"]
        assert nan["type"] == "ShardedLossError" and nan["ranks"] == [1] and nan["restored"]
        assert "is nan on rank(s) 1 of 2" in nan["message"]
        assert "no data on this rank" in result["raise_before_forward"]["message"]
        assert result["raise_after_forward"]["seconds"] < MODEL_GROUP_TIMEOUT_S  # no waiting
        assert result["raise_before_forward"]["seconds"] < 3 * MODEL_GROUP_TIMEOUT_S
    # One report, on every rank.
    assert results[0]["buggy"]["sharded"]["record"] == results[1]["buggy"]["sharded"]["record"]
    assert results[0]["guard"] == results[1]["guard"]


# -- 4 ranks: tensor parallel, and FSDP2 x TP on a 2-D mesh -----------------------------------


def _tp(model: Any, mesh: Any) -> Any:
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    return model


def _tp_worker(rank: int, world: int, out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    join_gloo(rank, world, out, DEADLINE_S)
    try:
        tp_mesh = init_device_mesh("cpu", (world,))
        mesh_2d = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))

        def fsdp_tp(model: Any) -> Any:
            return _fsdp(_tp(model, mesh_2d["tp"]), mesh_2d["dp"])

        result = {
            "tp_correct": _check_pair(None, lambda m: _tp(m, tp_mesh)),
            "tp_buggy_colwise": _check_pair("0", lambda m: _tp(m, tp_mesh)),
            "tp_buggy_rowwise": _check_pair("2", lambda m: _tp(m, tp_mesh)),
            "2d_buggy": _check_pair("0", fsdp_tp),
            "tp_buggy_colwise_screen": _check_pair(
                "0", lambda m: _tp(m, tp_mesh), strategy="screen"
            ),
            "2d_buggy_screen": _check_pair("0", fsdp_tp, strategy="screen"),
        }
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def test_tensor_parallel_and_2d_mesh_checks_equal_the_unsharded_check(
    tmp_path: pathlib.Path,
) -> None:
    """4 ranks: TP and FSDP2 x TP catch the layer with the bug, like the unsharded check."""
    results = _spawn(_tp_worker, 4, tmp_path)
    expected = {
        "tp_correct": [],
        "tp_buggy_colwise": ["0.weight"],
        "tp_buggy_rowwise": ["2.weight"],
        "2d_buggy": ["0.weight"],
        "tp_buggy_colwise_screen": ["0.weight"],
        "2d_buggy_screen": ["0.weight"],
    }
    for result in results:
        for case, failed in expected.items():
            pair = result[case]
            assert pair["sharded"]["failed"] == failed, case
            assert pair["restored"], case
            assert pair["sharded"]["status"] == pair["unsharded"]["status"], case
            for name, (status, difference, where) in pair["sharded"]["params"].items():
                ref_status, ref_difference, ref_where = pair["unsharded"]["params"][name]
                assert (status, where) == (ref_status, ref_where), (case, name)
                assert difference == pytest.approx(ref_difference, rel=1e-3, abs=1e-9)
            if failed:
                assert pair["sharded"]["params"][failed[0]][2][0] == 6, case  # the planted row
    # Colwise: rows 6-7 of 0.weight live on rank 3 alone.
    for case in ("tp_buggy_colwise", "tp_buggy_colwise_screen"):
        worst = results[0][case]["sharded"]["params"]["0.weight"][2]
        assert f"0.weight[{worst[0]}, {worst[1]}]: rank 3" in results[0][case]["sharded"]["owners"]
        assert results[0][case]["sharded"]["worst_owners"]["0.weight"] == [3]
    for case in expected:
        records = [r[case]["sharded"]["record"] for r in results]
        assert all(record == records[0] for record in records), case


def test_the_fsdp_example_catches_the_buggy_layer_on_every_rank() -> None:
    """examples/fsdp_check.py: 2 ranks, the bias gradient's missing factor, one report."""
    out = _run_example("fsdp_check.py")
    assert "FAILED, 1 of 6 tensors wrong: 2.bias" in out
    assert "a wrong constant factor" in out
    assert "the same report on every rank: True" in out


def test_private_apis_still_exist() -> None:
    """The private torch.distributed API in gradguard_torch._compat is still there."""
    assert callable(dist.distributed_c10d._get_default_store)


def test_unsharded_params_are_not_checked_collectively() -> None:
    """The seed hook answers None (no broadcast, no process group needed) for anything unsharded."""
    import numpy as np

    from gradguard.plugins import get_plugin_manager

    hook = get_plugin_manager().hook.gradguard_collective_seed
    model = zoo.build(None)
    for params in (model, {"w": torch.ones(3)}, {"w": np.ones(3)}):
        assert hook(params=params, seed=7) is None
    report = gg.check(zoo.loss_fn(*zoo.data()), model, seed=7)
    assert report.seed == 7 and "collective" not in str(report.notes)
