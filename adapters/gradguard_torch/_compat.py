"""The private PyTorch APIs the adapter uses, in one place, each pinned by a test.

``tests/test_torch_sharded.py::test_private_apis_still_exist`` and
``tests/test_torch_reliability.py::test_the_private_torch_apis_the_adapter_uses_exist`` fail
loudly when an upgrade moves one of them.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any, TypeGuard

import torch
import torch.distributed as dist
import torch.overrides

__all__ = [
    "calling_trainer",
    "close_interrupted_mode_stashes",
    "compile_counts",
    "compiled_original",
    "default_store",
    "function_modes",
    "innermost_function_mode",
    "is_compiled_module",
    "uncompile",
    "undefined_grad",
]


def default_store() -> Any:
    """The key-value store of the default process group (the one ``init_process_group`` set up).

    A sharded check writes a failing rank's message there, so that a rank blocked in a
    collective of the model when the failure happened can still name the rank that failed
    once its own collective gives up. ``torch.distributed`` has no public accessor.
    """
    return dist.distributed_c10d._get_default_store()


def function_modes() -> list[Any]:
    """The torch function modes now active, innermost last.

    Torch's own ``handle_torch_function`` pops the active mode while the mode's
    ``__torch_function__`` runs and pushes it back in a ``finally`` (a Python generator): a
    Ctrl-C that lands between the two loses the mode from the stack. Leaving the mode then
    has to look before it pops.
    """
    return list(torch.overrides._get_current_function_mode_stack())  # type: ignore[no-untyped-call]


def innermost_function_mode() -> Any:
    """The torch function mode entered last and still active, or ``None`` (the fast path)."""
    count = torch._C._len_torch_function_stack()
    return torch._C._get_function_stack_at(count - 1) if count else None


def _stash_code() -> Any:
    stash = torch.overrides._pop_mode_temporarily
    return getattr(stash, "__wrapped__", stash).__code__


def _suspended(generator: object, code: Any) -> TypeGuard[types.GeneratorType[Any, Any, Any]]:
    """Whether ``generator`` runs ``code`` and stopped at a ``yield`` (its finally not run)."""
    return (
        isinstance(generator, types.GeneratorType)
        and generator.gi_code is code
        and generator.gi_frame is not None
    )


def close_interrupted_mode_stashes(tb: types.TracebackType | None) -> None:
    """Finish torch's mode stashes that an exception cut short, before a mode is popped.

    ``handle_torch_function`` pops the mode inside ``with _pop_mode_temporarily():`` (a
    ``contextlib`` generator) and pushes it back in the generator's ``finally``. A Ctrl-C
    that lands in contextlib's ``__enter__`` after the pop, or in its ``__exit__`` before it
    resumes the generator, leaves the generator suspended: it would push the mode back
    whenever it is garbage-collected, after the check has ended. Closing it now runs that
    push while the mode is still being left, so the pop that follows removes it for good.
    """
    code = _stash_code()
    while tb is not None:
        manager = tb.tb_frame.f_locals.get("self")
        if isinstance(manager, contextlib._GeneratorContextManager):
            generator = getattr(manager, "gen", None)
            if _suspended(generator, code):
                generator.close()  # runs its finally: the push
        tb = tb.tb_next


def is_compiled_module(module: torch.nn.Module) -> bool:
    """Whether ``module`` is the wrapper ``torch.compile(model)`` returns (an OptimizedModule).

    Decided without importing ``torch._dynamo`` (which takes seconds): the wrapper's class is
    ``torch._dynamo.eval_frame.OptimizedModule`` and it holds the eager model as ``_orig_mod``.
    """
    cls = type(module)
    return cls.__name__ == "OptimizedModule" and cls.__module__ == "torch._dynamo.eval_frame"


def compiled_original(module: torch.nn.Module) -> torch.nn.Module:
    """The eager model inside a ``torch.compile`` wrapper (it owns the parameters)."""
    inner = module._orig_mod
    assert isinstance(inner, torch.nn.Module)
    return inner


def uncompile(module: torch.nn.Module) -> None:
    """Make a private copy run eagerly: drop what ``nn.Module.compile()`` set on it.

    ``model.compile()`` compiles in place by setting ``_compiled_call_impl``; a deep copy
    (the float64 shadow) carries it along and would compile a float64 graph of its own.
    """
    for submodule in module.modules():
        if getattr(submodule, "_compiled_call_impl", None) is not None:
            submodule._compiled_call_impl = None


def compile_counts() -> dict[str, int]:
    """How much ``torch.compile`` has compiled in this process: graphs and frames.

    ``unique_graphs`` counts Dynamo's graphs, ``calls_captured`` its captured calls; a check
    over a compiled model must add at most a few graphs, and a training step after it none.
    """
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "frames": int(counters["frames"]["ok"]),
    }


def undefined_grad(output: torch.Tensor) -> torch.Tensor:
    """``output`` passed through a node whose backward hands on an *undefined* gradient.

    ``gradguard_torch.gradcheck(check_undefined_grad=True)`` checks, as torch's gradcheck
    does, that a backward accepts undefined output grads; torch has no public way to make one.
    """
    undefined: torch.Tensor = torch._C._functions.UndefinedGrad()(output)  # type: ignore[assignment]  # typed as a list of tensors; returns one
    return undefined


def calling_trainer(depth: int = 12) -> Any:
    """The ``transformers.Trainer`` whose method is calling the current callback event.

    Trainer callbacks are given no Trainer; the Trainer calls every event from one of its
    own methods (``_inner_training_loop`` calls ``self.callback_handler.on_train_begin``,
    which calls each callback), so the frame ``depth`` levels up or fewer whose ``self`` is
    a Trainer is the one running. ``None`` when there is none (a handler called by hand).
    The Trainer's call structure is private: ``tests/test_transformers_callback.py`` pins it.
    """
    trainer_type = sys.modules["transformers"].Trainer
    frame: types.FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, trainer_type):
            return candidate
        frame = frame.f_back
    return None
