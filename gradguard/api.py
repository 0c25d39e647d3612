"""``gradguard.check``: the front door every other front door calls."""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable
from typing import Any, Literal

import attrs

from gradguard.context import CheckContext
from gradguard.engine import Settings, run_check
from gradguard.engine.selection import Selection
from gradguard.errors import AdapterNotFoundError, SettingsError
from gradguard.kit.contract import Adapter, FlatView, require_methods
from gradguard.kit.lifetime import OpenView, RandomStates
from gradguard.kit.signals import session
from gradguard.kit.threads import NumpyBlasPinned
from gradguard.kit.validate import check_loss_callable, describe_leaf, unclaimed_leaves
from gradguard.logs.paths import log_file_path
from gradguard.plugins import get_plugin_manager
from gradguard.results import CheckReport

__all__ = ["check", "find_adapter", "notify", "notify_event", "run_one"]


def find_adapter(params: object) -> Adapter:
    """The adapter that claims ``params``, asked through the ``gradguard_adapter_claim`` hook.

    Raises:
        AdapterNotFoundError: no registered adapter claims it; the message lists those asked.
    """
    manager = get_plugin_manager()
    adapter = manager.hook.gradguard_adapter_claim(params=params)
    if adapter is None:
        asked = [impl.plugin_name for impl in manager.hook.gradguard_adapter_claim.get_hookimpls()]
        strays = unclaimed_leaves(
            params, lambda leaf: manager.hook.gradguard_adapter_claim(params=leaf) is not None
        )
        if strays:
            listed = "; ".join(f"{where} is {describe_leaf(leaf)}" for where, leaf in strays)
            raise AdapterNotFoundError(
                f"params holds values that are not tensors: {listed}. params must hold only "
                "the arrays or tensors to check: keep settings and other values out of it "
                "(close over them in the loss)"
            )
        raise AdapterNotFoundError(
            f"no gradguard adapter understands params of type {type(params).__module__}."
            f"{type(params).__qualname__}; adapters asked: {', '.join(asked) or 'none'}. "
            "Pass arrays or dicts/lists/tuples of arrays, a framework model or tensor whose "
            "adapter is installed (pip install 'gradguard[torch]'), or register an adapter "
            "plugin for it"
        )
    if not isinstance(adapter, Adapter):
        raise AdapterNotFoundError(
            f"an adapter plugin returned {adapter!r}, which is not a gradguard.Adapter"
        )
    return adapter


def notify(report: CheckReport, context: CheckContext) -> None:
    """Call every ``gradguard_check_completed`` implementation; one that raises only warns."""
    _call_all("gradguard_check_completed", {"report": report, "context": context})


def notify_event(event: str, details: dict[str, Any], context: CheckContext) -> None:
    """Call every ``gradguard_lifecycle_event`` implementation; one that raises only warns."""
    _call_all("gradguard_lifecycle_event", {"event": event, "details": details, "context": context})


def _call_all(hook: str, arguments: dict[str, Any]) -> None:
    """Call every implementation of ``hook``, each in its own call through pluggy.

    A pluggy call stops at the first implementation that raises; a reporter must not stop
    the others (or the check). So each plain implementation is called through
    ``subset_hook_caller`` (a pluggy call over that implementation and every wrapper), in the
    order pluggy itself would call them: wrappers (``wrapper=True``, old-style
    ``hookwrapper=True``) wrap each reporter's call and see its exception first, and monitors
    added with ``add_hookcall_monitoring`` (tracing) see every call. One that still raises
    only warns.
    """
    manager = get_plugin_manager()
    impls = getattr(manager.hook, hook).get_hookimpls()
    plain = [impl for impl in impls if not (impl.wrapper or impl.hookwrapper)]
    wrapped = " (or a hook wrapper around it)" if len(plain) < len(impls) else ""
    for impl in reversed(plain):  # pluggy calls the last registered (and tryfirst) first
        others = [other.plugin for other in plain if other is not impl]
        try:
            manager.subset_hook_caller(hook, remove_plugins=others)(**arguments)
        except Exception as exc:
            warnings.warn(
                f"gradguard reporter {impl.plugin_name!r}{wrapped} failed: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )


def check(
    loss: Callable[..., Any],
    params: Any,
    grad: Any = None,
    *,
    eps: float | None = None,
    tolerance: float | None = None,
    sample: int | Literal["all"] | None = None,
    directions: int | None = None,
    seed: int | None = None,
    tensors: list[str] | tuple[str, ...] | None = None,
    log_file: str | None = None,
    strategy: Literal["screen", "per-tensor"] | None = None,
    order: Literal[1, 2] = 1,
    mode: Literal["reverse", "forward"] = "reverse",
    hvp: Callable[..., Any] | None = None,
) -> CheckReport:
    """Check an analytic gradient against central differences of the loss, tensor by tensor.

    The default strategy screens all tensors at once along a few preconditioned random
    directions (every element takes part), checks a few sampled coordinates, and probes on
    their own only the tensors the screen finds suspect (group testing over tensors, then
    bisection), with a step and a tolerance chosen for the dtype the loss is computed in. Seed mode,
    ``eps=1e-7, tolerance=1e-7, sample="all", directions=0``, is the seed recipe exactly.

    Args:
        loss: ``loss(params) -> scalar``, computed from the values in ``params``.
        params: The parameters: arrays, scalars, or dicts/lists/tuples of them (or a model,
            with a framework adapter). A model sharded over processes (PyTorch FSDP2 or
            tensor parallel) is checked collectively: call ``check`` on every rank.
        grad: ``grad(params)`` returning the gradient in params' structure, that structure
            itself, or ``None`` for the adapter's autodiff (NumPy has none).
        eps: Absolute step; default ``u**(1/3) * max(1, |x|)`` for the loss's dtype.
        tolerance: Tolerance on the relative difference; default by dtype
            (1e-6 float64, 1e-2 float32, 1e-1 float16).
        sample: ``None`` (default: 8 coordinates, at least one per tensor), an int k, or
            ``"all"`` (every coordinate).
        directions: Random directions per tensor (default 2; 0 with ``sample="all"``).
        seed: Seed for the private generator that picks coordinates and directions;
            drawn at random and recorded in the report when ``None``.
        tensors: Check only the tensors with these names (``None``: all of them).
        log_file: Append the check's record to this JSON-lines file (a regular file; one
            that cannot be written warns once and the check goes on).
        strategy: ``"screen"``: a few joint probes over all tensors at once, then group
            testing, per-tensor probes and bisection only for suspect tensors (a cost that
            does not grow with the number of tensors); ``"per-tensor"``: every tensor probed
            on its own. ``None``: the default, ``"screen"`` (see ``docs/check.md``).
        order: 1 (the gradient) or 2: Hessian-vector products ``H v`` of the loss along
            random directions against central differences of the analytic gradient, per
            tensor (double backward in PyTorch, ``jax.jvp`` of ``jax.grad``; NumPy needs
            ``hvp``). See ``docs/check.md``, "Second order".
        mode: ``"reverse"`` (the gradient) or ``"forward"``: each probe's analytic side is the
            loss's forward-mode JVP (``torch.autograd.forward_ad``, ``jax.jvp``), so custom
            JVP rules are what is checked.
        hvp: With ``order=2`` on NumPy params: ``hvp(params, v) -> H v``, ``v`` and the
            result in params' structure (``grad`` must then be a callable).

    Returns:
        The :class:`CheckReport`; ``report.raise_for_failure()`` turns a failure into an
        exception, ``print(report)`` shows the per-tensor table.

    Raises:
        SettingsError: an option is out of range, ``log_file`` is not a path, or there is
            nothing to check.
        InvalidParamsError: params cannot be checked (empty, integer, unsupported type).
        LossError: the loss is not a finite scalar.
        GradientError: the gradient is missing, mis-shaped or not finite.
    """
    settings = Settings(
        eps=eps,
        tolerance=tolerance,
        sample=sample,
        directions=directions,
        seed=seed,
        tensors=tensors,
        **({} if strategy is None else {"strategy": strategy}),
        order=order,
        mode=mode,
    )
    if hvp is not None and (order != 2 or not callable(hvp)):
        raise SettingsError(
            f"hvp must be a callable hvp(params, v) used with order=2, got {hvp!r} with "
            f"order={order!r}"
        )
    context = CheckContext(source="check", log_file=log_file_path(log_file))
    return run_one(loss, params, grad, settings, context, hvp=hvp)


def run_one(
    loss: Callable[..., Any],
    params: Any,
    grad: Any,
    settings: Settings,
    context: CheckContext,
    selection: Selection | None = None,
    hvp: Callable[..., Any] | None = None,
) -> CheckReport:
    """One check with validated settings, reported to the plugins: what every front door calls.

    ``selection`` is a training-loop front door's rotation (``Rotation.turn``), or ``None``;
    ``hvp`` the user's Hessian-vector product for ``order=2`` on params without autodiff.
    """
    check_loss_callable(loss)
    # Ctrl-C deferred while state is half-changed, one check per tensor at a time, and the
    # global random states (which loading the plugins would move) put back at the end.
    with session(), RandomStates():
        adapter = find_adapter(params)
        # A model sharded over processes is checked by every rank at once: the ranks must
        # draw the same coordinates and directions, so they agree on one seed (collective).
        seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        agreed = get_plugin_manager().hook.gradguard_collective_seed(params=params, seed=seed)
        if agreed is not None:
            settings = attrs.evolve(settings, seed=int(agreed))
        # NumPy's BLAS threads would spin against the framework's pool (kit.threads).
        with NumpyBlasPinned(not adapter.numpy_loss), OpenView(adapter, params, loss, grad) as view:
            _prepare_derivatives(adapter, view, settings, grad, hvp)
            report = run_check(view, settings, selection)
        notify(report, context)
    return report


def _prepare_derivatives(
    adapter: Adapter,
    view: FlatView,
    settings: Settings,
    grad: Any,
    hvp: Callable[..., Any] | None,
) -> None:
    """Refuse a view without what ``order=2`` / ``mode="forward"`` need, before evaluating."""
    if settings.order == 2:
        if adapter.autodiff and grad is not None and hvp is None:
            raise SettingsError(
                f"order=2 differentiates the loss twice with the {adapter.name} adapter's "
                "autodiff, and a given gradient cannot be differentiated: leave grad unset"
            )
        if hvp is not None:
            view.use_hvp(hvp)
        elif not adapter.autodiff:
            raise SettingsError(
                f"order=2 needs Hessian-vector products, and the {adapter.name} adapter has no "
                "autodiff: pass hvp=lambda params, v: ... (H v in params' structure), and grad "
                "as a callable"
            )
        require_methods(view, ("gradient_at", "hvp"))
    if settings.mode == "forward":
        require_methods(view, ("jvp",))
