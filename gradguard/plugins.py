"""The plugin manager: how adapters and reporters reach gradguard.

gradguard is a pluggy host, and its own behaviour is plugins too. Plugins come from:

1. the built-ins, :data:`BUILTIN_PLUGINS`: in-tree modules (the NumPy adapter, the
   JSON-lines reporter) registered with the same call a third party's plugin gets; listing
   them here keeps them available when a checkout's installed metadata is stale;
2. the entry-point group ``gradguard`` of every installed distribution, which is how a
   third party ships one::

       # pyproject.toml of a package "gradguard-mlx"
       [project.entry-points.gradguard]
       mlx = "gradguard_mlx"

3. :func:`register`, for a plugin object defined at run time (a test, a notebook).

A plugin is any module or object with functions named like the hooks in
:mod:`gradguard.hookspecs`, decorated with :data:`hookimpl`. Setting
``GRADGUARD_BLOCK_PLUGINS=name1,name2`` skips plugins by name (built-in or entry point),
for instance a third-party plugin that fails to import.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points

import pluggy

from gradguard import hookspecs
from gradguard.errors import PluginLoadError

__all__ = [
    "BLOCK_ENV",
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "get_plugin_manager",
    "hookimpl",
    "register",
    "reset_plugin_manager",
    "unregister",
]

hookimpl = pluggy.HookimplMarker("gradguard")
"""Marks a function as the implementation of a gradguard hook."""

ENTRY_POINT_GROUP = "gradguard"
BLOCK_ENV = "GRADGUARD_BLOCK_PLUGINS"

BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("jsonl-reporter", "gradguard.logs.writer"),
    ("numpy", "gradguard_numpy"),
    ("tensorflow", "gradguard_tensorflow"),
    ("torch", "gradguard_torch"),
    ("jax", "gradguard_jax"),
    ("keras", "gradguard_keras"),
)
"""``(name, module)`` of the plugins that ship with gradguard, registered in this order."""

_manager: pluggy.PluginManager | None = None


def blocked_names() -> frozenset[str]:
    """The plugin names listed in ``GRADGUARD_BLOCK_PLUGINS`` (comma or space separated)."""
    raw = os.environ.get(BLOCK_ENV, "")
    return frozenset(name for name in raw.replace(",", " ").split() if name)


def _check_hooks(manager: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    """Refuse a plugin that implements a ``gradguard_`` hook that does not exist (a typo)."""
    known = [n for n in vars(hookspecs) if n.startswith("gradguard_")]
    for caller in manager.get_hookcallers(plugin) or ():
        if caller.spec is None and caller.name.startswith("gradguard_"):
            manager.unregister(plugin)
            close = difflib.get_close_matches(caller.name, known, n=1)
            suggestion = f" (did you mean {close[0]}?)" if close else ""
            raise PluginLoadError(
                f"the gradguard plugin {name!r} implements {caller.name}, which is not a "
                f"gradguard hook{suggestion}; hooks: {', '.join(sorted(known))}"
            )


def _load(
    manager: pluggy.PluginManager, name: str, loader: Callable[[], object], origin: str
) -> None:
    try:
        plugin = loader()
        manager.register(plugin, name=name)
        _check_hooks(manager, plugin, name)
    except PluginLoadError:
        raise
    except Exception as exc:
        raise PluginLoadError(
            f"the gradguard plugin {name!r} ({origin}) failed to load: "
            f"{type(exc).__name__}: {exc}. Fix or uninstall it, or skip it with "
            f"{BLOCK_ENV}={name}"
        ) from exc


def _create() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("gradguard")
    manager.add_hookspecs(hookspecs)
    for name in blocked_names():
        manager.set_blocked(name)
    for name, module in BUILTIN_PLUGINS:
        if not manager.is_blocked(name):
            _load(manager, name, lambda m=module: importlib.import_module(m), "built-in")  # type: ignore[misc]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if manager.is_blocked(ep.name) or manager.has_plugin(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        _load(manager, ep.name, ep.load, f"entry point {ep.value!r} from {dist}")
    return manager


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first use.

    Raises:
        PluginLoadError: a plugin failed to import or register; the message names it.
    """
    global _manager
    if _manager is None:
        _manager = _create()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the plugin manager, so the next use loads plugins afresh (tests, notebooks)."""
    global _manager
    _manager = None


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time and return its name.

    Raises:
        PluginLoadError: the plugin's hook implementations do not match the hook specs.
    """
    manager = get_plugin_manager()
    try:
        registered = manager.register(plugin, name=name)
    except Exception as exc:
        raise PluginLoadError(
            f"the gradguard plugin {name or plugin!r} could not be registered: {exc}"
        ) from exc
    if registered is None:
        raise PluginLoadError(f"the gradguard plugin {name!r} is blocked ({BLOCK_ENV})")
    _check_hooks(manager, plugin, registered)
    return registered


def unregister(name: str) -> None:
    """Remove a plugin registered under ``name``; a name that is not registered is ignored."""
    manager = get_plugin_manager()
    if manager.has_plugin(name):
        manager.unregister(name=name)
