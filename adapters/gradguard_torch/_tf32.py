"""TF32 switched off for the duration of a check, and put back exactly as it was.

On Ampere and later GPUs, PyTorch may run float32 matmuls (``allow_tf32``, or
``set_float32_matmul_precision("high")``) and cuDNN convolutions and RNNs (on by default) in
TF32, whose 10-bit mantissa makes float32 central differences meaningless. A check turns both
off and restores them afterwards.

PyTorch 2.9+ has two ways to set these: the legacy flags (``torch.backends.cuda.matmul.
allow_tf32``, ``torch.backends.cudnn.allow_tf32``, ``set_float32_matmul_precision``) and the
``fp32_precision`` attributes. Once the new attributes are set, reading a legacy flag raises,
and setting a new attribute makes the legacy flags unreadable from then on. So the state is
saved and put back *through the same API the user used*: legacy setters when the legacy flags
are readable (and only for the flags that were on), ``fp32_precision`` attributes otherwise.
``tests/test_torch_adapter.py`` pins that every starting state round-trips, legacy readability
included.
"""

from __future__ import annotations

from typing import Any

import torch

from gradguard.kit import dtypes

__all__ = ["Tf32Switch", "tf32_snapshot"]

# (name, parent object, attribute) of the fp32_precision attributes that exist in this build,
# parents before children so that restoring in this order never sees a stale parent.
_PRECISION_PATHS = (
    ("fp32", ("",)),
    ("cuda.matmul", ("cuda", "matmul")),
    ("cudnn", ("cudnn",)),
    ("cudnn.conv", ("cudnn", "conv")),
    ("cudnn.rnn", ("cudnn", "rnn")),
    ("mkldnn", ("mkldnn",)),
    ("mkldnn.matmul", ("mkldnn", "matmul")),
    ("mkldnn.conv", ("mkldnn", "conv")),
    ("mkldnn.rnn", ("mkldnn", "rnn")),
)
# The GPU precisions a check switches to IEEE float32 when the new API is in use.
_GPU_PRECISIONS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")


def _holder(path: tuple[str, ...]) -> Any:
    obj: Any = torch.backends
    for part in path:
        if part:
            obj = getattr(obj, part, None)
            if obj is None:
                return None
    return obj


def _precisions() -> dict[str, str]:
    """The ``fp32_precision`` attributes this build has, by dotted name."""
    found = {}
    for name, path in _PRECISION_PATHS:
        holder = _holder(path)
        value = getattr(holder, "fp32_precision", None) if holder is not None else None
        if isinstance(value, str):
            found[name] = value
    return found


def _set_precision(name: str, value: str) -> None:
    path = dict(_PRECISION_PATHS)[name]
    _holder(path).fp32_precision = value


def _effective(precisions: dict[str, str], name: str) -> str:
    """A precision after inheritance: ``"none"`` defers to the parent attribute."""
    value = precisions.get(name, "none")
    parents = {"cuda.matmul": "fp32", "cudnn.conv": "cudnn", "cudnn.rnn": "cudnn", "cudnn": "fp32"}
    while value == "none" and name in parents:
        name = parents[name]
        value = precisions.get(name, "none")
    return value


def _legacy() -> tuple[bool, bool] | None:
    """``(matmul, cudnn)`` TF32 flags, or ``None`` when the new API made them unreadable."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return None


def tf32_snapshot() -> dict[str, object]:
    """Every TF32-related setting, and whether each legacy getter is readable (for tests)."""
    shot: dict[str, object] = dict(_precisions())
    getters = {
        "legacy.matmul": lambda: torch.backends.cuda.matmul.allow_tf32,
        "legacy.cudnn": lambda: torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
    }
    for name, get in getters.items():
        try:
            shot[name] = get()
        except RuntimeError:
            shot[name] = "unreadable"
    return shot


class Tf32Switch(dtypes.Tf32Switch):
    """PyTorch's TF32 settings: ``was_on`` names the GPU paths (``"matmul"``, ``"cudnn"``).

    The saving, the idempotence and the report's words are the kit's
    (:class:`gradguard.kit.dtypes.Tf32Switch`); this class reads, switches and puts back.
    """

    def _enabled(self) -> tuple[str, ...]:
        self._legacy = _legacy()
        self._precisions = _precisions()
        self._float32_matmul: str | None
        try:
            self._float32_matmul = torch.get_float32_matmul_precision()
        except RuntimeError:
            self._float32_matmul = None
        if self._legacy is not None:
            matmul, cudnn = self._legacy
        else:
            matmul = _effective(self._precisions, "cuda.matmul") == "tf32"
            cudnn = any(
                _effective(self._precisions, n) == "tf32" for n in ("cudnn.conv", "cudnn.rnn")
            )
        return tuple(name for name, on in (("matmul", matmul), ("cudnn", cudnn)) if on)

    def _disable(self) -> None:
        if self._legacy is not None:
            matmul, cudnn = self._legacy
            if matmul:
                torch.backends.cuda.matmul.allow_tf32 = False
            if cudnn:
                torch.backends.cudnn.allow_tf32 = False
        else:
            for name in _GPU_PRECISIONS:
                if name in self._precisions:
                    _set_precision(name, "ieee")

    def _put_back(self) -> None:
        if self._legacy is not None:
            matmul, cudnn = self._legacy
            if matmul:
                # set_float32_matmul_precision("high"/"medium") also sets the oneDNN matmul
                # precision; allow_tf32 = True does not. Replay whichever the user used.
                if (
                    self._float32_matmul not in (None, "highest")
                    and self._precisions.get("mkldnn.matmul", "none") != "none"
                ):
                    torch.set_float32_matmul_precision(self._float32_matmul)
                else:
                    torch.backends.cuda.matmul.allow_tf32 = True
            if cudnn:
                torch.backends.cudnn.allow_tf32 = True
            return
        current = _precisions()
        for name, value in self._precisions.items():
            if current.get(name) != value:
                _set_precision(name, value)
