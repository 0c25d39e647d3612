"""The JAX flat view: what the engine perturbs, evaluates and puts back.

JAX arrays are immutable, so the user's params are never written: the view is the kit's
:class:`~gradguard.kit.buffered.BufferedView` (the engine's writes land in host-side working
copies), and each evaluation hands the compiled loss the checked tensors as arguments, the
perturbed ones among them (one for a per-tensor probe, several or all for a joint one).
Gradients are checked by the kit's one validator
(:func:`~gradguard.kit.gradients.flatten_gradient`), notes keyed by :mod:`gradguard.kit.notes`.
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
from gradguard.kit import notes as kit_notes
from gradguard.kit.buffered import BufferedView
from gradguard.kit.contract import scalar_loss_value
from gradguard.kit.gradients import flatten_gradient
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


class JaxView(BufferedView):
    """A flat view over a JAX pytree, Flax NNX module or Equinox module."""

    adapter = "jax"
    # Every checked tensor is an argument of each compiled evaluation: a joint probe passes
    # several perturbed ones at once, at the cost of one.
    joint_writes = True

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
        # Private host copies: the originals restoration trusts (a JAX array on the CPU can
        # share its memory with np.asarray, and a donated buffer goes away).
        super().__init__([np.array(leaves[i], copy=True) for i in self._split.checked])
        self.layout = Layout.from_tensors(
            [
                (name, saved.shape, saved.dtype)
                for name, saved in zip(self._split.names, self.saved, strict=True)
            ]
        )
        self._nnx_state = self._snapshot()
        self._program: Program | None = None
        self._eval_dtypes: list[np.dtype[Any]] = []
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
        """Nothing the check does writes the user's params: the working copies are dropped,
        and an NNX module whose state a loss changed through a closure (outside the check's
        own copy) gets it back."""
        super().restore()
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
        checked_dtypes = {str(s.dtype) for s in self.saved}
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
        self._eval_dtypes = [np.dtype(str(c.dtype)) for c in checked]
        return program

    # -- FlatView ----------------------------------------------------------------------------

    def evaluation_dtype(self, segment: int) -> np.dtype[Any]:
        # Deciding it traces the loss: a float64 shadow evaluates every tensor in float64.
        self._ensure_program()
        return self._eval_dtypes[segment]

    def evaluate(self) -> float:
        program = self._ensure_program()
        checked = self._checked
        changes = self.perturbations
        if changes:
            checked = list(checked)
            # A NumPy copy goes to the compiled call as it is (JAX's C++ path transfers it,
            # faster than jnp.array); a copy, because the working buffer changes under the
            # next probe and the CPU backend may alias NumPy memory.
            for change in changes:
                shape = self.layout[change.segment].shape
                checked[change.segment] = change.values.reshape(shape).copy()
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
        return flatten_gradient(self.layout, grads, source="the analytic gradient (jax.grad)")

    # -- second order and forward mode (in the program's precision: the shadow or native) ---

    def _refuse_given_grad(self) -> None:
        if self._grad is not None:
            raise SettingsError(
                "order=2 differentiates the loss twice with JAX (jax.jvp of jax.grad), and a "
                "given gradient cannot be differentiated: leave grad unset"
            )

    def _tangents(self, vector: FloatArray) -> list[Any]:
        return [
            vector[segment.offset : segment.stop].reshape(segment.shape).astype(dtype)
            for segment, dtype in zip(self.layout, self._eval_dtypes, strict=True)
        ]

    def gradient_at(self, displacement: FloatArray) -> tuple[FloatArray, FloatArray]:
        self._refuse_given_grad()
        program = self._ensure_program()
        checked = list(self._checked)
        taken = np.zeros_like(displacement)
        for s, segment in enumerate(self.layout):
            part = displacement[segment.offset : segment.stop]
            if not part.any():
                continue
            start = self._start(s)  # the original in the evaluation dtype, flat
            stored = (start.astype(np.float64) + part).astype(start.dtype)
            taken[segment.offset : segment.stop] = stored.astype(np.float64) - start
            checked[s] = stored.reshape(segment.shape)
        grads = program.gradient(checked, self._others)
        flat = flatten_gradient(self.layout, grads, source="the analytic gradient (jax.grad)")
        return flat, taken

    def hvp(self, vector: FloatArray) -> FloatArray:
        self._refuse_given_grad()
        program = self._ensure_program()
        product = program.hvp(self._checked, self._others, self._tangents(vector))
        return flatten_gradient(
            self.layout, product, source="the Hessian-vector product (jax.jvp of jax.grad)"
        )

    def jvp(self, vector: FloatArray) -> float:
        program = self._ensure_program()
        return program.jvp(self._checked, self._others, self._tangents(vector))

    def _user_gradient(self) -> FloatArray:
        """``grad`` matched to the checked tensors by name (the same pytree, the
        ``nnx.State`` of ``nnx.grad``, the module of ``eqx.filter_grad``) or else in order,
        then through the kit's validator."""
        from gradguard_jax._tree import flatten_with_path

        value = self._grad(self._target) if callable(self._grad) else self._grad
        pairs = [(self._split.name_of(path), leaf) for path, leaf in flatten_with_path(value)[0]]
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
        return flatten_gradient(self.layout, grads, source="grad")

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
            kit_notes.EVALUATION: "; ".join([f"{how}, {mode}", *why]),
            # Facts only JAX has: keys of this adapter's own.
            "x64": "jax.enable_x64 context" if program.precision == "float64" else "not used",
            "params": self._split.kind,
            kit_notes.TRACE: "reused from an earlier check" if self._reused else "traced once",
        }
        if not self._reused:
            notes[kit_notes.TRACE_S] = round(program.trace_s, 3)
        notes.update(program.notes)
        return notes
