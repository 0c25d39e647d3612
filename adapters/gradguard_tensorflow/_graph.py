"""What a traced loss does, read from its graph: the float precision it computes in, the
variables it reads directly, and the variables it writes.

The adapter traces the user's loss once (``tf.function``) and then asks these questions of
the graph instead of trusting the dtypes the model declares: a float64 trace that still
casts to float32 somewhere (a loss object with a float32 dtype, a layer that hard-codes
``tf.float32``) is not a float64 evaluation, and the check must not use float64 tolerances.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard_tensorflow._compat import resource_dtype

__all__ = ["captured_resources", "float_precisions", "written_resources"]

# Ops that move or hold values without computing on them: a float32 input that is only
# read and then cast to float64 is exact, and costs no precision.
_PASSIVE = frozenset(
    {
        "Placeholder",
        "Const",
        "ReadVariableOp",
        "Identity",
        "IdentityN",
        "StopGradient",
        "NoOp",
        "Shape",
        "ShapeN",
        "Size",
        "Rank",
        "VarHandleOp",
        "VariableShape",
        "_Arg",
        "_Retval",
    }
)
# Attributes of a node that name the functions it runs (control flow, calls).
_FUNCTION_ATTRS = ("f", "body", "cond", "then_branch", "else_branch", "branches")
# Ops that write a resource variable named by their first input.
_WRITE_OPS = frozenset(
    {
        "AssignVariableOp",
        "AssignAddVariableOp",
        "AssignSubVariableOp",
        "ResourceStridedSliceAssign",
        "ResourceScatterUpdate",
        "ResourceScatterAdd",
        "ResourceScatterSub",
        "ResourceScatterMul",
        "ResourceScatterDiv",
        "ResourceScatterMin",
        "ResourceScatterMax",
        "ResourceScatterNdUpdate",
        "ResourceScatterNdAdd",
        "ResourceScatterNdSub",
        "ResourceScatterNdMin",
        "ResourceScatterNdMax",
        "RngReadAndSkip",
        "StatefulUniform",
        "StatefulUniformInt",
        "StatefulUniformFullInt",
        "StatefulStandardNormalV2",
        "StatefulTruncatedNormal",
    }
)
_FLOATS = {
    tf.float16.as_datatype_enum: "float16",
    tf.bfloat16.as_datatype_enum: "bfloat16",
    tf.float32.as_datatype_enum: "float32",
    tf.float64.as_datatype_enum: "float64",
}


def _reachable_ops(outputs: Iterable[Any]) -> list[Any]:
    """Every op that an output depends on through data edges."""
    seen: dict[str, Any] = {}
    stack = [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
    return list(seen.values())


def _function_names(attrs: Any) -> Iterator[str]:
    for key in _FUNCTION_ATTRS:
        if key in attrs:
            value = attrs[key]
            if value.HasField("func"):
                yield value.func.name
            for func in value.list.func:
                yield func.name


def _node_floats(node_def: Any) -> Iterator[tuple[str, str]]:
    """The float dtypes a node computes in, judged from its type attributes."""
    if node_def.op in _PASSIVE:
        return
    if node_def.op == "Cast":  # only the result's precision matters
        keys: Iterable[str] = ("DstT",)
    else:
        keys = node_def.attr.keys()
    for key in keys:
        value = node_def.attr[key]
        types = [value.type] if value.WhichOneof("value") == "type" else list(value.list.type)
        for enum in types:
            if enum in _FLOATS:
                yield _FLOATS[enum], f"{node_def.op} {node_def.name!r}"


def float_precisions(concrete: Any) -> dict[str, str]:
    """The float dtypes the traced function computes its outputs in, each with one example op.

    Only ops that the outputs depend on count (a moving-average update that is computed in
    float32 but never feeds the loss does not), and passive ops (reads, identities, casts
    from a lower precision) do not. Functions run by control flow (a ``while_loop`` in an
    RNN, a ``tf.cond``) count in full.
    """
    graph = concrete.graph
    found: dict[str, str] = {}
    pending: list[str] = []
    # Casts first: a cast down to a lower precision is where that precision comes from,
    # the most useful op to name in the report.
    ops = sorted(_reachable_ops(concrete.outputs), key=lambda op: op.type != "Cast")
    for op in ops:
        for name, where in _node_floats(op.node_def):
            found.setdefault(name, where)
        pending.extend(_function_names(op.node_def.attr))
    if pending:
        library = {f.signature.name: f for f in graph.as_graph_def().library.function}
        done: set[str] = set()
        while pending:
            name = pending.pop()
            if name in done or name not in library:
                continue
            done.add(name)
            for node in library[name].node_def:
                for dtype, where in _node_floats(node):
                    found.setdefault(dtype, where)
                pending.extend(_function_names(node.attr))
    return found


def captured_resources(concrete: Any) -> list[Any]:
    """The resource handles (variables) the traced function reads or writes directly."""
    return [external for external, _ in concrete.graph.captures if external.dtype == tf.resource]


def written_resources(concrete: Any) -> list[tuple[Any, Any]]:
    """The captured variables that the traced function may write, as ``(handle, dtype)``.

    A variable handle passed into control flow or a function call is counted as written:
    what happens inside is not inspected, and resetting a variable that was only read is
    harmless. Resources that are not variables (iterators, tables) are left out.
    """
    internal_of = {
        id(external): internal
        for external, internal in concrete.graph.captures
        if external.dtype == tf.resource
    }
    external_of = {internal.ref(): external for external, internal in concrete.graph.captures}
    written: dict[int, tuple[Any, Any]] = {}
    for op in concrete.graph.get_operations():
        if op.type in _WRITE_OPS:
            candidates = list(op.inputs)[:1]
        elif any(True for _ in _function_names(op.node_def.attr)):
            candidates = [t for t in op.inputs if t.dtype == tf.resource]
        else:
            continue
        for tensor in candidates:
            external = external_of.get(tensor.ref())
            if external is None or id(external) in written:
                continue
            dtype = resource_dtype(internal_of[id(external)])
            if dtype is not None:
                written[id(external)] = (external, dtype)
    return list(written.values())
