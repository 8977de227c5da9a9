"""Fused attention for the CUDA graphs: plain attention subgraphs become ``com.microsoft.MultiHeadAttention``.

The exported UNet computes every scaled-dot-product attention explicitly: the (B, heads, L, L)
score tensor of a self-attention layer is materialised twice (fp16 logits, fp32 softmax island),
8.6 GB + 17 GB per layer at 1024². ONNX Runtime's CUDA MultiHeadAttention runs flash or
memory-efficient attention, which never stores the scores. ORT's own transformer optimizer does
not recognise the pattern torch exports for ``F.scaled_dot_product_attention``, so it is matched
here:

    q4 = Transpose[0,2,1,3](Reshape(q, [0,0,H,-1]))     k4ᵀ = Transpose[0,2,3,1](Reshape(k, ...))
    probs = Softmax(MatMul(q4 · s, k4ᵀ · s))             s = sqrt(1/sqrt(D)), computed from shapes
    out4 = MatMul(probs, Transpose[0,2,1,3](Reshape(v, ...)))

(with the Casts of an fp16 graph's fp32 softmax island in between) and replaced by
``Transpose[0,2,1,3](Reshape(MultiHeadAttention(q, k, v), [0,0,H,D]))``, so every consumer of
``out4`` is untouched. That covers self-attention (attn1) and the text branch of cross-attention
(attn2). The SAA identity branch does not match (its logits are masked by a Where and feed the
gating sums), so it keeps its explicit fp32 computation; ``q4`` stays for it. The contrib op has
no TensorRT importer, so only ONNX Runtime's CUDA provider gets these graphs.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

CONTRIB_DOMAIN = "com.microsoft"
FUSED_OP = "MultiHeadAttention"
_Q_PERM, _KT_PERM = [0, 2, 1, 3], [0, 2, 3, 1]


class _Graph:
    """Producer/consumer look-ups, taken before the graph is edited."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {i.name: i for i in graph.initializer}
        self.shapes = {v.name: v.type.tensor_type for v in list(graph.value_info) + list(graph.input)}

    def through_casts(self, name: str, chain: list[onnx.NodeProto]) -> onnx.NodeProto | None:
        """The producer of ``name`` up through Casts (appended to ``chain``)."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Cast":
            chain.append(node)
            node = self.producer.get(node.input[0])
        return node

    def constant(self, name: str) -> list | None:
        init = self.constants.get(name)
        return numpy_helper.to_array(init).tolist() if init is not None else None


def _attr(node: onnx.NodeProto, name: str):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _split_heads(g: _Graph, name: str, perm: list[int]) -> tuple[str, int] | None:
    """``(x, heads)`` when ``name`` is ``Transpose[perm](Reshape(x, [0, 0, heads, -1]))``."""
    transpose = g.producer.get(name)
    if transpose is None or transpose.op_type != "Transpose" or _attr(transpose, "perm") != perm:
        return None
    reshape = g.producer.get(transpose.input[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    shape = g.constant(reshape.input[1])
    if not shape or len(shape) != 4 or shape[:2] != [0, 0] or shape[3] != -1 or shape[2] <= 0:
        return None
    return reshape.input[0], int(shape[2])


def _is_sdpa_scale(g: _Graph, name: str) -> bool:
    """``name`` is ``Sqrt(1 / Sqrt(x))`` of a value ``x`` computed from a shape: torch's export of
    SDPA's default scale, split as ``D^-1/4`` over q and k."""
    chain: list[onnx.NodeProto] = []
    root = g.through_casts(name, chain)
    if root is None or root.op_type != "Sqrt":
        return False
    div = g.producer.get(root.input[0])
    if div is None or div.op_type != "Div" or g.constant(div.input[0]) not in (1.0, [1.0]):
        return False
    inner = g.producer.get(div.input[1])
    if inner is None or inner.op_type != "Sqrt":
        return False
    seen, todo = set(), [inner.input[0]]
    while todo:  # the head size is read from a Shape, never from activations
        node = g.producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Shape":
            return True
        if node.op_type not in ("Cast", "Gather", "Slice", "Squeeze", "Unsqueeze"):
            return False
        todo.append(node.input[0])
    return False


def _scaled(g: _Graph, name: str, chain: list[onnx.NodeProto]) -> tuple[str, str] | None:
    """``(x, scale)`` when ``name`` is ``x * scale`` (through Casts)."""
    mul = g.through_casts(name, chain)
    if mul is None or mul.op_type != "Mul":
        return None
    chain.append(mul)
    for x, s in (mul.input, mul.input[::-1]):
        if _is_sdpa_scale(g, s):
            return x, s
    return None


def _head_size(g: _Graph, name: str) -> int | None:
    tensor = g.shapes.get(name)
    if tensor is None or len(tensor.shape.dim) != 4 or not tensor.shape.dim[3].HasField("dim_value"):
        return None
    return tensor.shape.dim[3].dim_value


def _match(g: _Graph, softmax: onnx.NodeProto) -> dict | None:
    """The attention around ``softmax``: its q, k, v (B, S, hidden), heads, head size, output and
    the nodes it replaces; None when ``softmax`` is not plain scaled-dot-product attention."""
    if _attr(softmax, "axis") not in (None, -1, 3):
        return None
    chain: list[onnx.NodeProto] = [softmax]
    logits = g.through_casts(softmax.input[0], chain)
    if logits is None or logits.op_type != "MatMul":
        return None
    chain.append(logits)
    q_side, k_side = _scaled(g, logits.input[0], chain), _scaled(g, logits.input[1], chain)
    if q_side is None or k_side is None or q_side[1] != k_side[1]:
        return None
    q, k = _split_heads(g, q_side[0], _Q_PERM), _split_heads(g, k_side[0], _KT_PERM)
    # The probabilities (after the softmax island's Cast back) must feed exactly one MatMul with v.
    probs = softmax.output[0]
    while len(g.consumers.get(probs, ())) == 1 and g.consumers[probs][0].op_type == "Cast":
        chain.append(g.consumers[probs][0])
        probs = g.consumers[probs][0].output[0]
    users = g.consumers.get(probs, [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != probs:
        return None
    product = users[0]
    v = _split_heads(g, product.input[1], _Q_PERM)
    head_size = _head_size(g, q_side[0])
    if q is None or k is None or v is None or not q[1] == k[1] == v[1] or head_size is None:
        return None
    if head_size != _head_size(g, product.input[1]):
        return None  # MultiHeadAttention's kernels want v's head size equal to q's
    # Every intermediate value (scaled q/k, logits, probabilities) must be used only inside the pattern.
    inside = {id(n) for n in chain} | {id(product)}
    for node in chain:
        if any(id(c) not in inside for out in node.output for c in g.consumers.get(out, ())):
            return None
    return {
        "q": q[0], "k": k[0], "v": v[0], "heads": q[1], "head_size": head_size,
        "output": product.output[0], "replaced": chain + [product],
    }


def _fused_nodes(found: dict, index: int) -> list[onnx.NodeProto]:
    """MultiHeadAttention on (B, S, hidden) inputs, reshaped back to the (B, heads, S, D) output
    the graph had, so its consumers need no change (a following Transpose cancels in ORT)."""
    base = f"/fused_attention_{index}"
    heads, head_size = found["heads"], found["head_size"]
    attention = helper.make_node(
        FUSED_OP, [found["q"], found["k"], found["v"]], [f"{base}/output"], name=f"{base}/{FUSED_OP}",
        domain=CONTRIB_DOMAIN, num_heads=heads, scale=1.0 / math.sqrt(head_size),
    )
    shape = helper.make_node(
        "Constant", [], [f"{base}/heads_shape"], name=f"{base}/heads_shape",
        value=numpy_helper.from_array(np.array([0, 0, heads, head_size], np.int64)),
    )
    split = helper.make_node(
        "Reshape", [f"{base}/output", f"{base}/heads_shape"], [f"{base}/split"], name=f"{base}/Reshape"
    )
    back = helper.make_node("Transpose", [f"{base}/split"], [found["output"]], name=f"{base}/Transpose", perm=_Q_PERM)
    return [attention, shape, split, back]


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace every plain attention subgraph of ``model`` (fp32 or fp16, shape-inferred) by
    MultiHeadAttention in place; returns how many were fused. Nodes left unused (the scale's shape
    arithmetic) are removed."""
    g = _Graph(model.graph)
    matches = [m for m in (_match(g, n) for n in list(model.graph.node) if n.op_type == "Softmax") if m]
    if not matches:
        return 0
    replaced = {id(n) for m in matches for n in m["replaced"]}
    new_at = {id(m["replaced"][-1]): _fused_nodes(m, i) for i, m in enumerate(matches)}
    nodes = []
    for node in model.graph.node:
        nodes.extend(new_at.get(id(node), [] if id(node) in replaced else [node]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_dead_nodes(model.graph)
    stale = {out for m in matches for n in m["replaced"] for out in n.output}
    kept = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    log.info("fused %d attention subgraphs into %s", len(matches), FUSED_OP)
    return len(matches)


def write_fused_attention(src: Path, dst: Path) -> int:
    """Write ``src`` with its plain attention fused as ``dst`` (checked); returns how many were fused."""
    from .onnx_export import save_model  # imports torch: only when an engine is being built

    model = onnx.load(str(src), load_external_data=True)
    fused = fuse_attention(model)
    if not fused:  # still correct, only without the memory saving: say so rather than fail the build
        log.warning("%s: no attention subgraph matched; its CUDA graph computes attention explicitly", src)
    save_model(model, dst)
    onnx.checker.check_model(str(dst), full_check=True)
    return fused


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs reach a graph output (one backward sweep), then the
    initializers no node uses any more."""
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in live for out in node.output):
            keep.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = [i for i in graph.initializer if i.name in live]
    del graph.initializer[:]
    graph.initializer.extend(used)
