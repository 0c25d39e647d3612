"""The JAX flat view: what the engine perturbs, evaluates and puts back.

JAX arrays are immutable, so the user's params are never written: the engine's writes land
in host-side work buffers (:mod:`gradguard_jax._buffer`), and each evaluation hands the
compiled loss the checked tensors as arguments, the one perturbed tensor among them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from gradguard.engine.layout import Layout
from gradguard.errors import GradientError, InvalidParamsError, SettingsError
from gradguard.kit.contract import FlatView, IndexArray, scalar_loss_value
from gradguard_jax._buffer import WorkBuffers
from gradguard_jax._detect import kind_of
from gradguard_jax._program import Float64Unavailable, Program, build_program
from gradguard_jax._tree import Split, split

__all__ = ["JaxView"]

FloatArray = npt.NDArray[np.float64]
Notes = dict[str, str | int | float | bool | None]


def _devices(value: Any) -> set[Any]:
    devices = getattr(value, "devices", None)
    return set(devices()) if callable(devices) else set()


def _require_one_device(split_: Split) -> None:
    seen: dict[Any, str] = {}
    for position, name in zip(split_.checked, split_.names, strict=True):
        devices = _devices(split_.leaves[position])
        if len(devices) > 1:
            raise InvalidParamsError(
                f"parameter {name!r} is sharded over {len(devices)} devices; gradguard checks "
                "params that live on one device: gather it first "
                "(jax.device_put(params, jax.devices()[0]))"
            )
        for device in devices:
            seen.setdefault(device, name)
    if len(seen) > 1:
        (d1, n1), (d2, n2) = list(seen.items())[:2]
        raise InvalidParamsError(
            f"params live on several devices ({n1!r} on {d1}, {n2!r} on {d2}); put them on one "
            "device first (jax.device_put(params, jax.devices()[0]))"
        )


def _is_float(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return isinstance(value, float)
    try:
        return bool(jnp.issubdtype(dtype, jnp.floating))
    except TypeError:  # PRNG key arrays
        return False


class JaxView(FlatView):
    """A flat view over a JAX pytree, Flax NNX module or Equinox module."""

    adapter = "jax"

    def __init__(self, params: Any, loss: Callable[..., Any], grad: Any, precision: str) -> None:
        kind = kind_of(params)
        if kind is None:
            raise InvalidParamsError(
                f"the JAX adapter cannot check a {type(params).__name__}: pass a pytree of JAX "
                "arrays, a Flax NNX module or an Equinox module"
            )
        self._target = params
        self._loss = loss
        self._grad = grad
        self._precision = precision
        self._split = split(params, kind)
        _require_one_device(self._split)
        leaves = self._split.leaves
        self._saved = [np.asarray(leaves[i]) for i in self._split.checked]
        self.layout = Layout.from_tensors(
            [
                (name, saved.shape, saved.dtype)
                for name, saved in zip(self._split.names, self._saved, strict=True)
            ]
        )
        self._nnx_state = self._snapshot()
        self._program: Program | None = None
        self._buffers: WorkBuffers | None = None
        self._checked: list[Any] = []
        self._others: list[Any] = []
        self._why: list[str] = []
        self._reused = False

    # -- state that must come back bit-identical -------------------------------------------

    def _snapshot(self) -> Any:
        if self._split.kind != "nnx":
            return None
        from flax import nnx

        return nnx.state(self._target)

    def restore(self) -> None:
        """Nothing the check does writes the user's params; an NNX module whose state a loss
        changed through a closure (outside the check's own copy) gets it back."""
        if self._nnx_state is None:
            return
        from flax import nnx

        now = jax.tree_util.tree_leaves(nnx.state(self._target))
        then = jax.tree_util.tree_leaves(self._nnx_state)
        if len(now) != len(then) or any(a is not b for a, b in zip(now, then, strict=True)):
            nnx.update(self._target, self._nnx_state)

    # -- choosing how to evaluate ------------------------------------------------------------

    def _ensure_program(self) -> Program:
        if self._program is None:
            self._program = self._open_program()
        return self._program

    def _open_program(self) -> Program:
        checked_dtypes = {str(s.dtype) for s in self._saved}
        native64 = checked_dtypes == {"float64"}
        if self._grad is not None and self._precision == "float64":
            raise SettingsError(
                "precision='float64' needs grad=None: a given gradient is judged in the params' "
                "own dtype (and with their random numbers); use precision='auto' or 'native'"
            )
        if self._grad is not None:
            self._why.append("grad given: judged in the params' own dtype")
        want64 = self._grad is None and self._precision in ("auto", "float64") and not native64
        if want64:
            try:
                return self._prepare("float64")
            except Float64Unavailable as exc:
                if self._precision == "float64":
                    raise SettingsError(
                        f"precision='float64' was asked for, but {exc}; use precision='auto' "
                        "(falls back to the params' dtype) or 'native'"
                    ) from exc
                self._why.append(f"no float64 shadow: {exc}")
        return self._prepare("native")

    def _inputs(self, precision: str) -> tuple[list[Any], list[Any]]:
        checked_at = set(self._split.checked)
        leaves = self._split.leaves
        checked: list[Any] = []
        others: list[Any] = []
        for position, leaf in enumerate(leaves):
            if precision == "float64" and _is_float(leaf):
                value = jnp.asarray(np.asarray(leaf, dtype=np.float64))
            elif position in checked_at:
                value = jnp.asarray(leaf)
            else:
                value = leaf
            (checked if position in checked_at else others).append(value)
        return checked, others

    def _prepare(self, precision: str) -> Program:
        context = jax.enable_x64(True) if precision == "float64" else None
        if context is not None:
            with context:
                checked, others = self._inputs(precision)
        else:
            checked, others = self._inputs(precision)
        avals = tuple(
            (np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in [*checked, *others]
        )
        key = None if self._split.static_key is None else (self._split.static_key, avals)
        program, self._reused = build_program(
            self._loss,
            self._split.rebuild,
            self._split.checked,
            len(self._split.leaves),
            precision,
            key,
        )
        if not program.traced:
            program.trace(checked, others, len(others))
        self._checked, self._others = checked, others
        self._buffers = WorkBuffers(self._saved, [np.dtype(np.asarray(c).dtype) for c in checked])
        return program

    # -- FlatView ----------------------------------------------------------------------------

    def _work(self) -> WorkBuffers:
        if self._buffers is None:
            self._ensure_program()
        assert self._buffers is not None
        return self._buffers

    def original(self, segment: int) -> FloatArray:
        saved = self._saved[segment].reshape(-1)
        if saved.dtype == np.float64:
            view = saved.view()
            view.flags.writeable = False
            return view
        return saved.astype(np.float64)

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        return self._work().write(segment, index, values)

    def reset(self, segment: int, index: IndexArray | None) -> None:
        self._work().reset(segment, index)

    def write_element(self, segment: int, local: int, value: float) -> float:
        return self._work().write_element(segment, local, value)

    def reset_element(self, segment: int, local: int) -> None:
        self._work().reset_element(segment, local)

    def evaluate(self) -> float:
        program = self._ensure_program()
        buffers = self._work()
        checked = self._checked
        dirty = buffers.dirty
        if dirty is not None:
            checked = list(checked)
            # A NumPy copy goes to the compiled call as it is (JAX's C++ path transfers it,
            # faster than jnp.array); a copy, because the work buffer changes under the next
            # probe and the CPU backend may alias NumPy memory.
            checked[dirty] = buffers.current(dirty).reshape(self.layout[dirty].shape).copy()
        value = program.evaluate(checked, self._others)
        return scalar_loss_value(np.asarray(value))

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return self._ensure_program().loss_dtype

    def gradient(self) -> FloatArray:
        program = self._ensure_program()
        if self._grad is not None:
            return self._user_gradient()
        grads = program.gradient(self._checked, self._others)
        return self._flatten(grads, "the analytic gradient (jax.grad)")

    def _user_gradient(self) -> FloatArray:
        value = self._grad(self._target) if callable(self._grad) else self._grad
        pairs = [
            (self._split.name_of(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]
        ]
        by_name = dict(pairs)
        names = self._split.names
        if all(name in by_name for name in names):
            grads = [by_name[name] for name in names]
        elif len(pairs) == len(names):
            grads = [leaf for _, leaf in pairs]
        else:
            given = ", ".join(name for name, _ in pairs[:6]) or "nothing"
            raise GradientError(
                f"grad gave {len(pairs)} array(s) ({given}) but {len(names)} tensors are "
                f"checked ({', '.join(names[:6])}); grad must mirror params (the same pytree, "
                "the nnx.State of nnx.grad, or the module of eqx.filter_grad)"
            )
        return self._flatten(grads, "grad")

    def _flatten(self, grads: list[Any], source: str) -> FloatArray:
        flat = np.empty(self.layout.size, dtype=np.float64)
        for segment, g in zip(self.layout, grads, strict=True):
            if g is None:
                raise GradientError(
                    f"{source} for {segment.name!r} is None; give an array of shape "
                    f"{segment.shape} for every parameter (zeros if the loss ignores it)"
                )
            try:
                value = np.asarray(g, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise GradientError(
                    f"{source} for {segment.name!r} is a {type(g).__name__}, not an array of "
                    f"shape {segment.shape}"
                ) from exc
            if value.shape != segment.shape:
                raise GradientError(
                    f"{source} for {segment.name!r} has shape {value.shape} but the parameter "
                    f"has shape {segment.shape}; give one array per parameter, same shape"
                )
            if not np.all(np.isfinite(value)):
                bad = np.argwhere(~np.isfinite(value))
                first = [int(i) for i in bad[0]] if value.ndim else []
                raise GradientError(
                    f"{source} for {segment.name!r} (shape {value.shape}) holds {bad.shape[0]} "
                    f"non-finite value(s), the first at {first}: {value[tuple(first)]!r}"
                )
            flat[segment.offset : segment.stop] = value.reshape(-1)
        return flat

    @property
    def notes(self) -> Notes:
        program = self._program
        if program is None:
            return {}
        if program.precision == "float64":
            how = "float64 shadow (x64 enabled for the check's own computations only)"
        else:
            how = f"{program.loss_dtype} (the params' own dtype)"
        mode = "compiled (jax.jit)" if program.compiled else "eager"
        why = [*self._why, *([program.why] if program.why else [])]
        notes: Notes = {
            "evaluation": "; ".join([f"{how}, {mode}", *why]),
            "x64": "jax.enable_x64 context" if program.precision == "float64" else "not used",
            "params": self._split.kind,
            "trace": "reused from an earlier check" if self._reused else "traced once",
        }
        if not self._reused:
            notes["trace_s"] = round(program.trace_s, 3)
        return notes
