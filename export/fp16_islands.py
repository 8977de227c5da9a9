"""The fp32 islands of an fp16 graph: which nodes must keep computing in fp32, and a clean-up pass.

ONNX Runtime's fp16 converter turns every float tensor, every ``Cast(to=float)`` and every graph
input into fp16 unless its node is blocked. Three computations of the UNet must stay fp32:
- the control path: everything computed from the small control inputs (timestep, boxes, scales,
  boost, gating, mixing) and from shapes alone: the sinusoidal timestep embedding (t·frequency up
  to ~1000 loses its fraction in fp16), the box grid arithmetic (boxes × grid + margin, Floor: 0.53
  is 0.5298 in fp16, so an edge lands a cell early) and the position rows/columns;
- the SAA identity branch after its logits: the gating sum, min-max normalisation, boost, masking,
  softmax and the value product, as :class:`~dynamicid_rt.models.saa.SAAAttnProcessor` runs them.
These are found by data flow on the fp32 graph (:func:`fp32_island_nodes`) and handed to the
converter's ``node_block_list``. The converter still stores every blocked node's output as fp16
between nodes (a Cast down and a Cast up around each one); :func:`drop_fp16_round_trips` removes
those pairs, so the islands compute and store fp32 throughout.
"""
from __future__ import annotations

import onnx

from dynamicid_rt.contract import ENGINES

# Graph inputs by role: control values (small, precision-critical: EngineSpec.control_inputs), the
# activation stream, identity tokens.
IDENTITY_INPUTS = frozenset({"id_tokens"})
_WEIGHT_OPS = {"MatMul": (1,), "Gemm": (1, 2), "Conv": (1, 2), "ConvTranspose": (1, 2)}
_SMALL_CONSTANT = 4096  # elements: larger initializers are weights whatever consumes them
_SHAPE_OPS = ("Shape", "Size")

CONTROL, SHAPE, IDENTITY, STREAM, WEIGHT = "control", "shape", "identity", "stream", "weight"


def _numel(init: onnx.TensorProto) -> int:
    n = 1
    for d in init.dims:
        n *= d
    return n


def _sources(graph: onnx.GraphProto) -> dict[str, frozenset[str]]:
    """What each value is computed from (a set of roles), for every value of ``graph`` in order."""
    weights = {node.input[i] for node in graph.node for i in _WEIGHT_OPS.get(node.op_type, ()) if i < len(node.input)}
    roles: dict[str, frozenset[str]] = {}
    control = {name for spec in ENGINES.values() for name in spec.control_inputs}
    for init in graph.initializer:
        roles[init.name] = frozenset({WEIGHT}) if init.name in weights or _numel(init) > _SMALL_CONSTANT else frozenset()
    for value in graph.input:
        if value.name not in roles:
            role = CONTROL if value.name in control else IDENTITY if value.name in IDENTITY_INPUTS else STREAM
            roles[value.name] = frozenset({role})
    for node in graph.node:
        if node.op_type in _SHAPE_OPS:
            out = frozenset({SHAPE})  # a shape carries no values of its input
        else:
            out = frozenset().union(*(roles.get(name, frozenset()) for name in node.input if name))
        for name in node.output:
            roles[name] = out
    return roles


def _is_control(node: onnx.NodeProto, roles: frozenset[str], weights: set[str]) -> bool:
    """A node computing from control inputs or shapes (and small constants), possibly with identity
    values (the per-token scale on v_z), never from the activation stream, and not itself a layer
    with weights (those stay fp16: the time-embedding and identity projections)."""
    if any(node.input[i] in weights for i in _WEIGHT_OPS.get(node.op_type, ()) if i < len(node.input)):
        return False
    return bool(roles) and STREAM not in roles and (CONTROL in roles or roles == {SHAPE})


def fp32_island_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that must compute in fp32 (see the module docstring). ``model`` is the
    fp32 graph in topological order; unnamed nodes get names here, as the converter blocks by name."""
    graph = model.graph
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_island_scan_{i}"
    roles = _sources(graph)
    weights = {i.name for i in graph.initializer if WEIGHT in roles[i.name]}
    # A Shape of a control value is blocked too, so that the value itself never needs an fp16 copy.
    island = {
        n.name for n in graph.node
        if _is_control(n, roles[n.input[0]] if n.op_type in _SHAPE_OPS else roles[n.output[0]], weights)
    }

    # The identity branch starts after each q·k_zᵀ MatMul (stream × identity) and takes every node
    # fed by it whose other inputs are not activations from outside the branch; it ends where it
    # joins the text branch (O_t + ...), whose other operand is a stream value.
    branch: set[str] = set()
    if not {"sample", *IDENTITY_INPUTS} <= {i.name for i in graph.input}:
        return island  # not the UNet (the IMR's own id_tokens input is an ordinary activation)
    for node in graph.node:
        ins = [roles.get(name, frozenset()) for name in node.input if name]
        fed = [name for name in node.input if name in branch]
        if not fed and node.op_type == "MatMul" and len(ins) == 2 and any(STREAM in r for r in ins) and any(
            IDENTITY in r and STREAM not in r for r in ins
        ):
            branch.update(node.output)  # the logits MatMul itself runs in fp16, as in the module
            continue
        outside_stream = [name for name in node.input if name and name not in branch and STREAM in roles.get(name, ())]
        if fed and not outside_stream:
            island.add(node.name)
            branch.update(node.output)
    return island


def drop_fp16_round_trips(graph: onnx.GraphProto) -> int:
    """Replace ``Cast(to=fp32)(Cast(to=fp16)(x))`` of an fp32 ``x`` by ``x`` and drop Casts left
    unused; returns how many round trips were removed. Only rounding is removed: values get more
    exact, never less."""
    producer = {out: node for node in graph.node for out in node.output}
    elem = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info)}
    elem |= {i.name: i.data_type for i in graph.initializer}
    for node in graph.node:  # Cast outputs have the type of their "to"
        if node.op_type == "Cast":
            elem[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
    renamed: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Cast" or elem.get(node.output[0]) != onnx.TensorProto.FLOAT:
            continue
        down = producer.get(node.input[0])
        if down is None or down.op_type != "Cast" or elem.get(down.output[0]) != onnx.TensorProto.FLOAT16:
            continue
        if elem.get(down.input[0]) == onnx.TensorProto.FLOAT:
            renamed[node.output[0]] = down.input[0]
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed and name not in outputs:
                node.input[i] = renamed[name]
    _drop_unused_casts(graph)
    return len(renamed)


def _drop_unused_casts(graph: onnx.GraphProto) -> None:
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(out in used for out in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)
