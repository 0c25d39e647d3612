"""A zoo of small hand-written NumPy models with analytic (backprop) gradients.

Every model comes as a :class:`Case`: a fresh parameter dict, a ``loss(params)``
and a hand-written ``grad(params)``.  The correct variants are exact; the bug
variants plant a known mistake in the backward pass and record in
``Case.corrupted`` exactly which tensors' gradients the mistake changes.

Conventions
-----------
* Pure NumPy.  Data (inputs/targets) are fixed per case and live in the
  closures; parameters are only ever read from the ``params`` argument.
* Everything is computed in the case's dtype (float64 or float32): data are
  stored in that dtype and only Python scalars (which NumPy 2 treats as "weak")
  are mixed in, so float32 cases never silently upcast.  Nothing is cast back
  at the end, so an accidental upcast would show in the output dtypes.
* ``loss`` returns a 0-d ``np.ndarray`` of the case dtype; ``grad`` returns a
  new dict (nested like ``params``) of arrays with the parameters' shapes.
* Nested parameter names are joined with ``"."`` (e.g. ``"layer1.W"``).
* Linear layers are ``Z = X @ W + b`` with ``W`` of shape ``(fan_in, fan_out)``
  (softmax regression uses ``W`` of shape ``(classes, features)``).
* relu'(z) is taken as 1 for z > 0 and 0 otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["Case", "all_cases", "bug_cases", "correct_cases"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One gradient-checking test case."""

    name: str
    # excluded from repr/eq/hash, so cases are hashable and compare by identity-ish fields
    params: dict = dataclasses.field(repr=False, compare=False)
    loss: Callable[[dict], Any] = dataclasses.field(repr=False, compare=False)
    grad: Callable[[dict], dict] = dataclasses.field(repr=False, compare=False)
    corrupted: frozenset
    dtype: np.dtype
    bug: str | None


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

_BUG_KINDS = ("wrong_factor", "wrong_sign", "missing_term", "one_row", "scale_0.1pct")


def _dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"unsupported dtype {dt}; use float64 or float32")
    return dt


def _arr(values, dtype) -> np.ndarray:
    """Cast float64 values to ``dtype`` (fresh, writable array)."""
    return np.array(values, dtype=dtype)


def _data(values, dtype) -> np.ndarray:
    """Cast to ``dtype`` and make read-only (fixed data captured by closures)."""
    a = np.array(values, dtype=dtype)
    a.setflags(write=False)
    return a


def _onehot(labels, k, dtype) -> np.ndarray:
    a = np.eye(k, dtype=dtype)[labels]
    a.setflags(write=False)
    return a


def _scalar(x) -> np.ndarray:
    return np.asarray(x)


def _log_softmax(z):
    zs = z - z.max(axis=1, keepdims=True)
    return zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))


def _sigmoid(z):
    # 1 / (1 + exp(-z)), written without overflow; derivative is s * (1 - s)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _check_bug(bug, allowed):
    if bug is not None and bug not in allowed:
        raise ValueError(f"unknown inline bug {bug!r}; allowed: {sorted(allowed)}")


# --------------------------------------------------------------------------
# 1. softmax regression, mean cross-entropy
# --------------------------------------------------------------------------


def _softmax_reg(dtype, bug=None):
    _check_bug(bug, {"wrong_factor_W"})
    rng = np.random.default_rng(1001)
    m, d, k = 32, 20, 6
    X = _data(rng.standard_normal((m, d)), dtype)
    y = rng.integers(0, k, size=m)
    Yoh = _onehot(y, k, dtype)
    params = {
        "W": _arr(0.3 * rng.standard_normal((k, d)), dtype),
        "b": _arr(0.1 * rng.standard_normal(k), dtype),
    }

    def loss(p):
        logp = _log_softmax(X @ p["W"].T + p["b"])
        return _scalar(-(logp * Yoh).sum() / m)

    def grad(p):
        z = X @ p["W"].T + p["b"]
        P = np.exp(_log_softmax(z))
        G = (P - Yoh) / m  # dL/dz
        # BUG wrong_factor_W: forgot the 1/m
        dW = (P - Yoh).T @ X if bug == "wrong_factor_W" else G.T @ X
        db = G.sum(axis=0)
        return {"W": dW, "b": db}

    return params, loss, grad


# --------------------------------------------------------------------------
# 2. two-layer tanh MLP, MSE
# --------------------------------------------------------------------------


def _mlp2_tanh(dtype, bug=None):
    _check_bug(bug, {"wrong_factor_W2", "missing_term_tanh_deriv"})
    rng = np.random.default_rng(1002)
    m, d, h, o = 16, 8, 24, 3
    X = _data(rng.standard_normal((m, d)), dtype)
    Y = _data(rng.standard_normal((m, o)), dtype)
    params = {
        "W1": _arr(rng.standard_normal((d, h)) / np.sqrt(d), dtype),
        "b1": _arr(0.1 * rng.standard_normal(h), dtype),
        "W2": _arr(rng.standard_normal((h, o)) / np.sqrt(h), dtype),
        "b2": _arr(0.1 * rng.standard_normal(o), dtype),
    }

    def loss(p):
        A1 = np.tanh(X @ p["W1"] + p["b1"])
        R = A1 @ p["W2"] + p["b2"] - Y
        return _scalar(np.mean(R * R))

    def grad(p):
        A1 = np.tanh(X @ p["W1"] + p["b1"])
        R = A1 @ p["W2"] + p["b2"] - Y
        dYh = R * (2.0 / (m * o))
        # BUG wrong_factor_W2: the factor 2 of the square applied twice
        dW2 = A1.T @ (2.0 * dYh) if bug == "wrong_factor_W2" else A1.T @ dYh
        db2 = dYh.sum(axis=0)
        dA1 = dYh @ p["W2"].T
        # BUG missing_term_tanh_deriv: forgot tanh'(z) = 1 - tanh(z)^2
        dZ1 = dA1 if bug == "missing_term_tanh_deriv" else dA1 * (1.0 - A1 * A1)
        dW1 = X.T @ dZ1
        db1 = dZ1.sum(axis=0)
        return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}

    return params, loss, grad


# --------------------------------------------------------------------------
# 3. three-layer MLP (sigmoid, tanh, softmax-CE) with nested params
# --------------------------------------------------------------------------


def _mlp3_nested(dtype, bug=None):
    _check_bug(bug, {"missing_term_layer2_deriv", "wrong_factor_layer1.b"})
    rng = np.random.default_rng(1003)
    m, d, h1, h2, k = 24, 10, 16, 12, 4
    X = _data(rng.standard_normal((m, d)), dtype)
    y = rng.integers(0, k, size=m)
    Yoh = _onehot(y, k, dtype)
    params = {
        "layer1": {
            "W": _arr(rng.standard_normal((d, h1)) / np.sqrt(d), dtype),
            "b": _arr(0.1 * rng.standard_normal(h1), dtype),
        },
        "layer2": {
            "W": _arr(rng.standard_normal((h1, h2)) * (2.0 / np.sqrt(h1)), dtype),
            "b": _arr(0.1 * rng.standard_normal(h2), dtype),
        },
        "out": {
            "W": _arr(rng.standard_normal((h2, k)) / np.sqrt(h2), dtype),
            "b": _arr(0.1 * rng.standard_normal(k), dtype),
        },
    }

    def forward(p):
        A1 = _sigmoid(X @ p["layer1"]["W"] + p["layer1"]["b"])
        A2 = np.tanh(A1 @ p["layer2"]["W"] + p["layer2"]["b"])
        Z3 = A2 @ p["out"]["W"] + p["out"]["b"]
        return A1, A2, Z3

    def loss(p):
        _, _, Z3 = forward(p)
        return _scalar(-(_log_softmax(Z3) * Yoh).sum() / m)

    def grad(p):
        A1, A2, Z3 = forward(p)
        dZ3 = (np.exp(_log_softmax(Z3)) - Yoh) / m
        dW3 = A2.T @ dZ3
        db3 = dZ3.sum(axis=0)
        dA2 = dZ3 @ p["out"]["W"].T
        # BUG missing_term_layer2_deriv: forgot tanh' in layer 2
        dZ2 = dA2 if bug == "missing_term_layer2_deriv" else dA2 * (1.0 - A2 * A2)
        dW2 = A1.T @ dZ2
        db2 = dZ2.sum(axis=0)
        dA1 = dZ2 @ p["layer2"]["W"].T
        dZ1 = dA1 * A1 * (1.0 - A1)
        dW1 = X.T @ dZ1
        # BUG wrong_factor_layer1.b: mean instead of sum over the batch
        db1 = dZ1.mean(axis=0) if bug == "wrong_factor_layer1.b" else dZ1.sum(axis=0)
        return {
            "layer1": {"W": dW1, "b": db1},
            "layer2": {"W": dW2, "b": db2},
            "out": {"W": dW3, "b": db3},
        }

    return params, loss, grad


# --------------------------------------------------------------------------
# 4. 2-D convolution (valid, stride 1) + bias + softplus + linear readout, MSE
# --------------------------------------------------------------------------


def _conv2d(dtype, bug=None):
    _check_bug(bug, {"missing_term_act_deriv", "wrong_factor_b"})
    rng = np.random.default_rng(1004)
    m, c, hh, ww = 6, 2, 8, 8  # batch, in-channels, height, width
    co, kh, kw = 4, 3, 3  # out-channels, kernel size
    ho, wo = hh - kh + 1, ww - kw + 1
    o = 2
    X = _data(rng.standard_normal((m, c, hh, ww)), dtype)
    Y = _data(rng.standard_normal((m, o)), dtype)
    # im2col of the fixed input: cols[n, i, j, ch, di, dj] = X[n, ch, i+di, j+dj]
    win = sliding_window_view(X, (kh, kw), axis=(2, 3))  # (m, c, ho, wo, kh, kw)
    cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(m * ho * wo, c * kh * kw)
    cols.setflags(write=False)
    nfeat = ho * wo * co
    params = {
        "W": _arr(rng.standard_normal((co, c, kh, kw)) / np.sqrt(c * kh * kw), dtype),
        "b": _arr(0.1 * rng.standard_normal(co), dtype),
        "V": _arr(rng.standard_normal((nfeat, o)) / np.sqrt(nfeat), dtype),
        "c": _arr(0.1 * rng.standard_normal(o), dtype),
    }

    def forward(p):
        # Z[n, i, j, oc] = sum_{ch,di,dj} X[n, ch, i+di, j+dj] * W[oc, ch, di, dj] + b[oc]
        Z = (cols @ p["W"].reshape(co, -1).T + p["b"]).reshape(m, ho, wo, co)
        A = np.logaddexp(0.0, Z)  # softplus
        R = A.reshape(m, nfeat) @ p["V"] + p["c"] - Y
        return Z, A, R

    def loss(p):
        _, _, R = forward(p)
        return _scalar(np.mean(R * R))

    def grad(p):
        Z, A, R = forward(p)
        dYh = R * (2.0 / (m * o))
        dV = A.reshape(m, nfeat).T @ dYh
        dc = dYh.sum(axis=0)
        dA = (dYh @ p["V"].T).reshape(m, ho, wo, co)
        # BUG missing_term_act_deriv: forgot softplus'(z) = sigmoid(z)
        dZ = dA if bug == "missing_term_act_deriv" else dA * _sigmoid(Z)
        dZf = dZ.reshape(m * ho * wo, co)
        dW = (dZf.T @ cols).reshape(co, c, kh, kw)
        # BUG wrong_factor_b: averaged over output positions instead of summed
        db = dZ.mean(axis=(1, 2)).sum(axis=0) if bug == "wrong_factor_b" else dZf.sum(axis=0)
        return {"W": dW, "b": db, "V": dV, "c": dc}

    return params, loss, grad


# --------------------------------------------------------------------------
# 5. Linear -> BatchNorm (training mode) -> tanh -> Linear, MSE
# --------------------------------------------------------------------------


def _batchnorm(dtype, bug=None):
    _check_bug(bug, {"missing_term_var"})
    rng = np.random.default_rng(1005)
    m, d, h, o = 16, 8, 16, 3
    eps = 1e-5
    X = _data(rng.standard_normal((m, d)), dtype)
    Y = _data(rng.standard_normal((m, o)), dtype)
    params = {
        "W1": _arr(rng.standard_normal((d, h)) / np.sqrt(d), dtype),
        # b1's true gradient is exactly zero: BN subtracts the batch mean.
        "b1": _arr(0.5 * rng.standard_normal(h), dtype),
        "gamma": _arr(1.0 + 0.2 * rng.standard_normal(h), dtype),
        "beta": _arr(0.2 * rng.standard_normal(h), dtype),
        "W2": _arr(rng.standard_normal((h, o)) / np.sqrt(h), dtype),
        "b2": _arr(0.1 * rng.standard_normal(o), dtype),
    }

    def forward(p):
        Z = X @ p["W1"] + p["b1"]
        Zc = Z - Z.mean(axis=0)
        inv = 1.0 / np.sqrt((Zc * Zc).mean(axis=0) + eps)
        Xh = Zc * inv
        A = np.tanh(p["gamma"] * Xh + p["beta"])
        R = A @ p["W2"] + p["b2"] - Y
        return Xh, inv, A, R

    def loss(p):
        *_, R = forward(p)
        return _scalar(np.mean(R * R))

    def grad(p):
        Xh, inv, A, R = forward(p)
        dYh = R * (2.0 / (m * o))
        dW2 = A.T @ dYh
        db2 = dYh.sum(axis=0)
        dU = (dYh @ p["W2"].T) * (1.0 - A * A)  # dL/d(gamma*Xh+beta)
        dgamma = (dU * Xh).sum(axis=0)
        dbeta = dU.sum(axis=0)
        dXh = dU * p["gamma"]
        if bug == "missing_term_var":
            # BUG: dropped the path through the batch variance
            dZ = (inv / m) * (m * dXh - dXh.sum(axis=0))
        else:
            dZ = (inv / m) * (m * dXh - dXh.sum(axis=0) - Xh * (dXh * Xh).sum(axis=0))
        dW1 = X.T @ dZ
        db1 = dZ.sum(axis=0)  # analytically 0 (roundoff only)
        return {"W1": dW1, "b1": db1, "gamma": dgamma, "beta": dbeta, "W2": dW2, "b2": db2}

    return params, loss, grad


# --------------------------------------------------------------------------
# 6. vanilla tanh RNN, unrolled, loss on every step, BPTT
# --------------------------------------------------------------------------


def _rnn_tanh(dtype, bug=None):
    _check_bug(bug, {"missing_term_recurrent", "wrong_factor_Why"})
    rng = np.random.default_rng(1006)
    m, T, d, h, o = 4, 6, 3, 10, 2
    X = _data(rng.standard_normal((m, T, d)), dtype)
    Y = _data(rng.standard_normal((m, T, o)), dtype)
    params = {
        "Wxh": _arr(0.5 * rng.standard_normal((d, h)), dtype),
        "Whh": _arr(rng.standard_normal((h, h)) * (0.8 / np.sqrt(h)), dtype),
        "bh": _arr(0.1 * rng.standard_normal(h), dtype),
        "Why": _arr(rng.standard_normal((h, o)) / np.sqrt(h), dtype),
        "by": _arr(0.1 * rng.standard_normal(o), dtype),
    }

    def forward(p):
        hs = [np.zeros((m, h), dtype=dtype)]  # h_0 = 0
        for t in range(T):
            hs.append(np.tanh(X[:, t] @ p["Wxh"] + hs[-1] @ p["Whh"] + p["bh"]))
        H = np.stack(hs[1:], axis=1)  # (m, T, h)
        R = H @ p["Why"] + p["by"] - Y  # (m, T, o)
        return hs, H, R

    def loss(p):
        *_, R = forward(p)
        return _scalar(np.mean(R * R))

    def grad(p):
        hs, H, R = forward(p)
        dYh = R * (2.0 / (m * T * o))
        if bug == "wrong_factor_Why":
            # BUG: normalised by m*o only (forgot the time average) in this branch
            dWhy = H.reshape(m * T, h).T @ (R * (2.0 / (m * o))).reshape(m * T, o)
        else:
            dWhy = H.reshape(m * T, h).T @ dYh.reshape(m * T, o)
        dby = dYh.sum(axis=(0, 1))
        dH = dYh @ p["Why"].T  # (m, T, h)
        dWxh = np.zeros_like(p["Wxh"])
        dWhh = np.zeros_like(p["Whh"])
        dbh = np.zeros_like(p["bh"])
        dh_next = np.zeros((m, h), dtype=dH.dtype)
        for t in reversed(range(T)):
            # BUG missing_term_recurrent: dropped the path dL/dh_t through h_{t+1}
            dh = dH[:, t] if bug == "missing_term_recurrent" else dH[:, t] + dh_next
            da = dh * (1.0 - hs[t + 1] * hs[t + 1])
            dWxh += X[:, t].T @ da
            dWhh += hs[t].T @ da
            dbh += da.sum(axis=0)
            dh_next = da @ p["Whh"].T
        return {"Wxh": dWxh, "Whh": dWhh, "bh": dbh, "Why": dWhy, "by": dby}

    return params, loss, grad


# --------------------------------------------------------------------------
# 7. ReLU MLP, MSE (and the "relu_kinks" variant)
# --------------------------------------------------------------------------

# (hidden unit j, sample k) pairs whose pre-activation is planted at ~1e-10
RELU_KINKS = ((2, 0), (7, 5), (19, 11))


def _relu_mlp_impl(dtype, bug=None, kinks=False):
    _check_bug(bug, {"missing_term_relu_mask"})
    # Seed chosen so that every pre-activation (other than the planted kinks of
    # the relu_kinks variant) is at least 0.0167 away from zero, so central
    # differences with steps up to ~1e-3 never straddle a kink by accident.
    rng = np.random.default_rng(3817)
    m, d, h, o = 16, 10, 32, 3
    X = _data(rng.standard_normal((m, d)), dtype)
    Y = _data(rng.standard_normal((m, o)), dtype)
    params = {
        "W1": _arr(rng.standard_normal((d, h)) / np.sqrt(d), dtype),
        "b1": _arr(0.1 * rng.standard_normal(h), dtype),
        "W2": _arr(rng.standard_normal((h, o)) / np.sqrt(h), dtype),
        "b2": _arr(0.1 * rng.standard_normal(o), dtype),
    }
    if kinks:
        Z1 = X @ params["W1"]  # same matmul as in the forward
        for j, k in RELU_KINKS:
            params["b1"][j] = -Z1[k, j] + 1e-10  # pre-activation (k, j) ~ 1e-10

    def loss(p):
        A1 = np.maximum(X @ p["W1"] + p["b1"], 0.0)
        R = A1 @ p["W2"] + p["b2"] - Y
        return _scalar(np.mean(R * R))

    def grad(p):
        Z1 = X @ p["W1"] + p["b1"]
        A1 = np.maximum(Z1, 0.0)
        R = A1 @ p["W2"] + p["b2"] - Y
        dYh = R * (2.0 / (m * o))
        dW2 = A1.T @ dYh
        db2 = dYh.sum(axis=0)
        dA1 = dYh @ p["W2"].T
        # BUG missing_term_relu_mask: forgot relu'(z) = [z > 0]
        dZ1 = dA1 if bug == "missing_term_relu_mask" else dA1 * (Z1 > 0)
        dW1 = X.T @ dZ1
        db1 = dZ1.sum(axis=0)
        return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}

    return params, loss, grad


def _relu_mlp(dtype, bug=None):
    return _relu_mlp_impl(dtype, bug, kinks=False)


def _relu_kinks(dtype, bug=None):
    return _relu_mlp_impl(dtype, bug, kinks=True)


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------

_MODELS: dict[str, Callable] = {
    "softmax_reg": _softmax_reg,
    "mlp2_tanh": _mlp2_tanh,
    "mlp3_nested": _mlp3_nested,
    "conv2d": _conv2d,
    "batchnorm": _batchnorm,
    "rnn_tanh": _rnn_tanh,
    "relu_mlp": _relu_mlp,
    "relu_kinks": _relu_kinks,
}


def _negate(g):
    return -g


def _scale_0p1pct(g):
    return g * 1.001


def _row3_times_1p5(g):
    g = g.copy()
    g[3] *= 1.5
    return g


@dataclasses.dataclass(frozen=True)
class _Bug:
    model: str
    label: str  # e.g. "wrong_sign_W2"; label starts with the kind
    kind: str
    corrupted: frozenset
    # None: the model's backward pass implements ``label`` inline.
    # Otherwise (dotted tensor name, function applied to that correct gradient).
    post: tuple | None = None


# Each ``corrupted`` set is exactly the set of tensors whose buggy gradient
# differs from the true one.  Notes on the non-obvious ones:
#  * mlp2_tanh/missing_term_tanh_deriv: the error enters at dZ1, so only the
#    first layer (W1, b1) changes; W2/b2 are computed before it.
#  * mlp3_nested/missing_term_layer2_deriv: enters at dZ2 and flows down into
#    layer 1, so layer2.{W,b} and layer1.{W,b} change; out.* do not.
#  * batchnorm/missing_term_var: dZ is wrong, but both the true and the buggy dZ
#    sum to zero over the batch, so b1 stays (numerically) zero: only W1.
#  * rnn_tanh/missing_term_recurrent: every da_t with t < T-1 is wrong, so all of
#    Wxh, Whh, bh change; Why, by are computed from the outputs and do not.
_BUGS: tuple[_Bug, ...] = (
    _Bug("softmax_reg", "wrong_factor_W", "wrong_factor", frozenset({"W"})),
    _Bug("softmax_reg", "wrong_sign_b", "wrong_sign", frozenset({"b"}), ("b", _negate)),
    _Bug("softmax_reg", "scale_0.1pct_W", "scale_0.1pct", frozenset({"W"}), ("W", _scale_0p1pct)),
    _Bug("mlp2_tanh", "wrong_factor_W2", "wrong_factor", frozenset({"W2"})),
    _Bug("mlp2_tanh", "wrong_sign_W2", "wrong_sign", frozenset({"W2"}), ("W2", _negate)),
    _Bug("mlp2_tanh", "missing_term_tanh_deriv", "missing_term", frozenset({"W1", "b1"})),
    _Bug("mlp2_tanh", "one_row_W1", "one_row", frozenset({"W1"}), ("W1", _row3_times_1p5)),
    _Bug("mlp2_tanh", "scale_0.1pct_W1", "scale_0.1pct", frozenset({"W1"}), ("W1", _scale_0p1pct)),
    _Bug(
        "mlp3_nested",
        "missing_term_layer2_deriv",
        "missing_term",
        frozenset({"layer2.W", "layer2.b", "layer1.W", "layer1.b"}),
    ),
    _Bug("mlp3_nested", "wrong_factor_layer1.b", "wrong_factor", frozenset({"layer1.b"})),
    _Bug("mlp3_nested", "wrong_sign_out.b", "wrong_sign", frozenset({"out.b"}), ("out.b", _negate)),
    _Bug(
        "mlp3_nested",
        "scale_0.1pct_layer2.W",
        "scale_0.1pct",
        frozenset({"layer2.W"}),
        ("layer2.W", _scale_0p1pct),
    ),
    _Bug("conv2d", "missing_term_act_deriv", "missing_term", frozenset({"W", "b"})),
    _Bug("conv2d", "wrong_factor_b", "wrong_factor", frozenset({"b"})),
    _Bug("batchnorm", "missing_term_var", "missing_term", frozenset({"W1"})),
    _Bug("batchnorm", "wrong_sign_gamma", "wrong_sign", frozenset({"gamma"}), ("gamma", _negate)),
    _Bug("rnn_tanh", "missing_term_recurrent", "missing_term", frozenset({"Wxh", "Whh", "bh"})),
    _Bug("rnn_tanh", "wrong_factor_Why", "wrong_factor", frozenset({"Why"})),
    _Bug(
        "rnn_tanh", "scale_0.1pct_Whh", "scale_0.1pct", frozenset({"Whh"}), ("Whh", _scale_0p1pct)
    ),
    _Bug("relu_mlp", "one_row_W1", "one_row", frozenset({"W1"}), ("W1", _row3_times_1p5)),
    _Bug("relu_mlp", "missing_term_relu_mask", "missing_term", frozenset({"W1", "b1"})),
    _Bug("relu_mlp", "wrong_sign_b2", "wrong_sign", frozenset({"b2"}), ("b2", _negate)),
)


def _apply_post(grad, dotted, fn):
    keys = dotted.split(".")

    def buggy_grad(p):
        g = grad(p)
        node = g
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = fn(node[keys[-1]])
        return g

    return buggy_grad


def _make_bug_case(spec: _Bug, dt: np.dtype) -> Case:
    builder = _MODELS[spec.model]
    if spec.post is None:
        params, loss, grad = builder(dt, spec.label)
    else:
        params, loss, grad = builder(dt, None)
        grad = _apply_post(grad, *spec.post)
    return Case(
        name=f"{spec.model}/{spec.label}/{dt.name}",
        params=params,
        loss=loss,
        grad=grad,
        corrupted=spec.corrupted,
        dtype=dt,
        bug=spec.kind,
    )


def correct_cases(dtype=np.float64) -> list[Case]:
    """Every model with its correct hand-written gradient, freshly built."""
    dt = _dtype(dtype)
    cases = []
    for model, builder in _MODELS.items():
        params, loss, grad = builder(dt, None)
        cases.append(
            Case(
                name=f"{model}/{dt.name}",
                params=params,
                loss=loss,
                grad=grad,
                corrupted=frozenset(),
                dtype=dt,
                bug=None,
            )
        )
    return cases


def bug_cases(dtype=np.float64) -> list[Case]:
    """Planted-bug variants, freshly built.

    The ``scale_0.1pct`` bugs are only produced for float64 (in float32 a 0.1%
    error is not reliably distinguishable from rounding noise).
    """
    dt = _dtype(dtype)
    return [
        _make_bug_case(spec, dt)
        for spec in _BUGS
        if dt == np.float64 or spec.kind != "scale_0.1pct"
    ]


def all_cases() -> list[Case]:
    """float64 correct + bugs, then float32 correct + the large (non-0.1%) bugs."""
    return (
        correct_cases(np.float64)
        + bug_cases(np.float64)
        + correct_cases(np.float32)
        + bug_cases(np.float32)
    )
