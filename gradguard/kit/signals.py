"""Ctrl-C that never cuts a check's state in half: SIGINT deferred while state is inconsistent.

Python raises ``KeyboardInterrupt`` from its SIGINT handler at almost any bytecode of the main
thread. A check changes process-wide state in pairs (a float64 default dtype and a torch
function mode pushed, then popped; a Keras ``StatelessScope`` entered, then left; perturbed
values written, then the originals written back). An interrupt that lands between the two
halves of a pair, or inside ``__enter__`` after the state changed but before the
``with`` statement has registered its ``__exit__``, leaves the process changed for good.

The tools, for the adapters and the front door:

* :class:`deferred`, a *critical section*: a SIGINT that arrives inside it is remembered and
  delivered (``KeyboardInterrupt`` raised, or the application's own handler called) when the
  outermost section ends. Nestable; a counter and a flag, so cheap enough for every loss
  evaluation while a :class:`session` holds the handler.
* :func:`transition`, a decorator for ``__enter__`` / ``__exit__`` methods that do their work
  in a section: a SIGINT that comes in the few bytecodes around the section is held as well,
  and the method ends with :func:`entered` (an ``__enter__``: if a SIGINT is held, leave
  again, then deliver it, so the ``with`` statement never sees a half-entered state) or
  :func:`left` (an ``__exit__``: deliver it once everything is restored).
  :class:`protected` does all of this for any third-party context manager.
* :class:`session`, held by :func:`gradguard.api.run_one` around a whole check: installs the
  deferring handler once (``signal.signal`` costs ~1-25 us, too much per evaluation) and puts
  the previous handler back at the end. Outside a session no handler is installed, and
  sections change nothing (a SIGINT acts as it always does).

Only the main thread receives SIGINT in Python, so everything here is a no-op on other
threads. Where SIGINT is ignored or left to the operating system (``SIG_IGN``, ``SIG_DFL``),
there is no ``KeyboardInterrupt`` to defer and the handler is not installed.
"""

from __future__ import annotations

import _thread
import gc
import os
import signal
import sys
import threading
import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

__all__ = [
    "ProtectedContext",
    "deferred",
    "entered",
    "interrupt_pending",
    "left",
    "protected",
    "session",
    "transition",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_SIGINT = signal.SIGINT


class _State:
    """The process's deferral state (touched only on the main thread)."""

    __slots__ = ("depth", "pending", "previous", "users")

    def __init__(self) -> None:
        self.depth = 0  # open critical sections
        self.pending = False  # a SIGINT arrived and is not delivered yet
        self.users = 0  # open sessions (the handler is installed while there is one)
        self.previous: Any = None  # the handler ours replaced


_state = _State()
_main_ident = threading.main_thread().ident


def _after_fork() -> None:  # the forking thread is the child's main thread
    global _main_ident, _state
    _main_ident = _thread.get_ident()
    _state = _State()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

_TRANSITIONS: set[types.CodeType] = set()


def transition(function: F) -> F:
    """Mark ``function`` (an ``__enter__`` or ``__exit__``) as a state transition.

    A SIGINT that comes while its frame is on the stack, outside its section too, is held
    until the method's closing :func:`entered` or :func:`left` (or an enclosing section)
    delivers it.
    """
    _TRANSITIONS.add(function.__code__)
    return function


def _in_transition(frame: types.FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _TRANSITIONS:
            return True
        frame = frame.f_back
    return False


def _deliver(signum: int, frame: types.FrameType | None) -> None:
    """Hand a SIGINT to the handler ours replaced (``KeyboardInterrupt``, usually)."""
    state = _state
    state.pending = False
    previous = state.previous
    if callable(previous):
        previous(signum, frame)
    else:  # pragma: no cover - only installed over a callable handler
        signal.default_int_handler(signum, frame)


def _callback_codes() -> set[types.CodeType]:
    codes = set()
    for callback in gc.callbacks:
        function = getattr(callback, "__func__", callback)
        code = getattr(function, "__code__", None)
        if code is None:  # a callable object: its class's __call__
            call = vars(type(callback)).get("__call__")
            code = getattr(call, "__code__", None)
        if isinstance(code, types.CodeType):
            codes.add(code)
    return codes


# Weak-reference callbacks of the standard library (and torch's copy, torch/utils/weak.py):
# the dictionaries' and sets' ``remove`` and ``weakref.finalize``. Called when an object dies,
# whatever Python code is running; an exception there is dropped as unraisable.
_WEAKREF_FILES = ("weakref.py", "_weakrefset.py", "weak.py")
_WEAKREF_CALLBACKS = frozenset({"remove", "_remove", "__call__"})


def _dropping(frame: types.FrameType | None) -> bool:
    """Whether an exception raised at ``frame`` would be dropped as unraisable: inside a gc
    callback (pytest plugins such as hypothesis register one), a ``__del__`` or a weak
    reference's callback."""
    callbacks = _callback_codes() if gc.callbacks else set()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code in callbacks:
            return True
        if code.co_name in _WEAKREF_CALLBACKS and code.co_filename.endswith(_WEAKREF_FILES):
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: types.FrameType | None) -> None:
    """The SIGINT handler while a check runs: hold it inside sections and transitions, and
    where a KeyboardInterrupt would be dropped (delivered at the next section's end, or when
    the session ends)."""
    if _state.depth > 0 or _in_transition(frame) or _dropping(frame):
        _state.pending = True
    else:
        _deliver(signum, frame)


def _install() -> None:
    current = signal.getsignal(_SIGINT)
    if current is _handler or not callable(current):
        return  # already ours, or SIGINT raises no KeyboardInterrupt (SIG_IGN, SIG_DFL)
    _state.previous = current
    signal.signal(_SIGINT, _handler)


def _uninstall() -> None:
    if signal.getsignal(_SIGINT) is _handler:  # else the application replaced it: keep theirs
        signal.signal(_SIGINT, _state.previous)


def _settle(frame: types.FrameType) -> None:
    """A section ended at depth 0 with a SIGINT held: deliver it, unless a transition is still
    running (its :func:`entered` or :func:`left` delivers it)."""
    if not _in_transition(frame):
        _deliver(_SIGINT, frame)


def interrupt_pending() -> bool:
    """Whether a SIGINT arrived inside a critical section and is not delivered yet."""
    return _state.pending


class deferred:
    """A critical section: a SIGINT inside it is delivered when the outermost one ends.

    Use it for the few statements that change state in pairs (a restore loop, a mode push).
    Delivery raises ``KeyboardInterrupt`` (or calls the application's SIGINT handler) right
    after the section, or at the end of the :func:`transition` it is in. Outside a
    :class:`session` no handler is installed, and a SIGINT acts as it always does.
    """

    __slots__ = ("_open",)

    def __enter__(self) -> deferred:
        self._open = _thread.get_ident() == _main_ident
        if self._open:
            _state.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:
            state = _state
            state.depth -= 1
            if state.depth == 0 and state.pending:
                _settle(sys._getframe(1))


def entered(undo: Callable[[], object]) -> None:
    """End a transition's ``__enter__``: if a SIGINT came meanwhile, ``undo()`` and deliver it.

    ``undo`` leaves what ``__enter__`` entered (inside a section); the ``KeyboardInterrupt``
    then comes out of the ``with`` statement, with nothing entered.
    """
    state = _state
    if state.pending and state.depth == 0 and _thread.get_ident() == _main_ident:
        with deferred():
            undo()
        _deliver(_SIGINT, sys._getframe(1))


def left() -> None:
    """End a transition's ``__exit__``: deliver a SIGINT that came while it ran."""
    state = _state
    if state.pending and state.depth == 0 and _thread.get_ident() == _main_ident:
        _deliver(_SIGINT, sys._getframe(1))


class session:
    """Install the deferring SIGINT handler for a whole check, then put the old one back.

    :func:`gradguard.api.run_one` holds one around every check (sessions nest). Installing
    costs a ``signal.signal`` call (1-25 us), so it is done once per check, not per section.
    """

    __slots__ = ("_open",)

    @transition
    def __enter__(self) -> session:
        self._open = _thread.get_ident() == _main_ident
        if self._open:
            with deferred():
                _state.users += 1
                if _state.users == 1:
                    try:
                        _install()
                    except BaseException:  # the old handler ran a SIGINT that came first
                        _state.users -= 1
                        raise
            entered(self._release)
        return self

    def _release(self) -> None:
        _state.users -= 1
        if _state.users == 0:
            _uninstall()  # from here on a SIGINT goes straight to the old handler

    @transition
    def __exit__(self, *exc: object) -> None:
        if self._open:
            with deferred():
                self._release()
            left()  # everything is restored: the last step


class ProtectedContext:
    """Base of a context manager that changes global state: entered whole, left whole.

    A subclass writes :meth:`_enter` and :meth:`_leave` as plain code; the base runs each as
    a :func:`transition` inside a :func:`deferred` section, so a Ctrl-C leaves the state
    entirely changed (raised in the body, or after the exit) or entirely unchanged (raised
    from the ``with`` statement, :meth:`_leave` already run). :class:`protected` is the same
    for any existing context manager; subclass this one where the context manager is a class
    of your own (a framework mode that also sets a default, say).

    In a subclass that also derives from a framework class with its own ``__enter__`` /
    ``__exit__`` (put this base first), :meth:`_enter` and :meth:`_leave` call the framework's
    by name (``FrameworkMode.__enter__(self)``): ``super()`` would find this base again.
    """

    __slots__ = ()

    def _enter(self) -> Any:
        """Change the state; what ``with ... as`` binds. On an exception, change nothing."""
        raise NotImplementedError

    def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        """Put the state back; a true result suppresses the exception, as ``__exit__``'s."""
        raise NotImplementedError

    @transition
    def __enter__(self) -> Any:
        with deferred():
            value = self._enter()
        entered(self._undo)
        return value

    def _undo(self) -> None:
        self._leave(None, None, None)

    @transition
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        with deferred():
            suppress = self._leave(exc_type, exc, tb)
        left()
        return suppress


class protected(ProtectedContext, Generic[T]):
    """Enter and leave a context manager that changes global state, each as one step.

    ``with protected(keras.StatelessScope(...)):`` enters the scope entirely or not at all,
    and leaves it entirely, whenever a Ctrl-C comes; the ``KeyboardInterrupt`` is raised in
    the body (the scope then left as usual), from the ``with`` statement with the scope
    already left, or after the exit.
    """

    __slots__ = ("_cm",)

    def __init__(self, cm: AbstractContextManager[T]) -> None:
        self._cm = cm

    def _enter(self) -> T:
        return self._cm.__enter__()

    def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        return self._cm.__exit__(exc_type, exc, tb)
