"""A check's hold on the user's state, from the snapshot to the last byte put back.

:func:`gradguard.api.run_one` runs every check inside these two context managers:

* :class:`RandomStates` saves Python's ``random`` and NumPy's global random state before
  anything else (loading the plugins imports structlog, which imports rich, which draws from
  ``random``; a loss may draw from ``np.random`` on any adapter) and puts both back at the
  end, so a check never moves the caller's random streams.
* :class:`OpenView` waits until no other thread checks the same tensors
  (:mod:`gradguard.kit.locks`), then claims them and opens the adapter's view in one
  critical section (:mod:`gradguard.kit.signals`), and on the way out restores the view and
  releases the tensors in another. A Ctrl-C at any moment therefore finds the view either
  not opened (nothing changed) or opened and certain to be restored.
"""

from __future__ import annotations

import random
import types
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from gradguard.kit import locks
from gradguard.kit.contract import Adapter, FlatView
from gradguard.kit.signals import deferred, entered, left, transition

__all__ = ["OpenView", "RandomStates"]


class RandomStates:
    """Python's and NumPy's global random states, saved on enter and put back on exit."""

    __slots__ = ("_numpy", "_python")

    @transition
    def __enter__(self) -> RandomStates:
        with deferred():
            self._python = random.getstate()
            self._numpy = np.random.get_state()
        entered(lambda: None)  # only snapshots taken: nothing to leave
        return self

    @transition
    def __exit__(self, *exc: object) -> None:
        with deferred():
            random.setstate(self._python)
            np.random.set_state(self._numpy)
        left()


class OpenView:
    """``with OpenView(adapter, params, loss, grad) as view:``, one check per tensor at a time.

    Args:
        adapter: The adapter that claimed ``params``.
        params, loss, grad: As :meth:`Adapter.open` takes them.
    """

    __slots__ = ("_adapter", "_args", "_keys", "_view")

    def __init__(self, adapter: Adapter, params: Any, loss: Callable[..., Any], grad: Any) -> None:
        self._adapter = adapter
        self._args = (params, loss, grad)
        self._keys: frozenset[Hashable] = frozenset(adapter.lock_keys(params))
        self._view: FlatView | None = None
        # Waiting here, outside __enter__ (a transition), leaves a Ctrl-C free to end the wait.
        locks.wait_free(self._keys)

    @transition
    def __enter__(self) -> FlatView:
        keys = self._keys
        while True:
            with deferred():
                if locks.try_claim(keys):
                    try:
                        view = self._adapter.open(*self._args)
                    except BaseException:
                        locks.release(keys)
                        raise
                    self._view = view
            if self._view is not None:
                entered(self._close)
                return self._view
            left()  # nothing is held: a Ctrl-C that came meanwhile is delivered now
            locks.wait_free(keys)  # another thread came first (rare): wait for it again

    @transition
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        with deferred():
            self._close(exc_type, exc, tb)
        left()

    def _close(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: types.TracebackType | None = None,
    ) -> None:
        try:
            if self._view is not None:
                self._view.__exit__(exc_type, exc, tb)
        finally:
            locks.release(self._keys)
