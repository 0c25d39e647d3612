"""gradguard: are the gradients your code computes right?

>>> import gradguard as gg
>>> report = gg.check(loss, params, grad)  # doctest: +SKIP
>>> print(report)  # doctest: +SKIP

Importing gradguard imports no ML framework; framework adapters arrive as plugins.
"""

from __future__ import annotations

from gradguard.api import check, find_adapter
from gradguard.context import CheckContext
from gradguard.engine import Settings
from gradguard.engine.layout import Layout, Segment
from gradguard.errors import (
    AdapterNotFoundError,
    ConcurrentCheckError,
    GradGuardError,
    GradGuardLogWarning,
    GradientCheckError,
    GradientCheckWarning,
    GradientError,
    InconclusiveCheckError,
    InvalidParamsError,
    LogError,
    LossError,
    MissingDependencyError,
    PluginLoadError,
    SettingsError,
)
from gradguard.guard import Guard
from gradguard.kit.contract import Adapter, FlatView
from gradguard.plugins import get_plugin_manager, hookimpl, register, unregister
from gradguard.results import CheckReport, ParamReport, Status

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterNotFoundError",
    "CheckContext",
    "CheckReport",
    "ConcurrentCheckError",
    "FlatView",
    "GradGuardError",
    "GradGuardLogWarning",
    "GradientCheckError",
    "GradientCheckWarning",
    "GradientError",
    "Guard",
    "InconclusiveCheckError",
    "InvalidParamsError",
    "Layout",
    "LogError",
    "LossError",
    "MissingDependencyError",
    "ParamReport",
    "PluginLoadError",
    "Segment",
    "Settings",
    "SettingsError",
    "Status",
    "__version__",
    "check",
    "find_adapter",
    "get_plugin_manager",
    "hookimpl",
    "register",
    "unregister",
]
