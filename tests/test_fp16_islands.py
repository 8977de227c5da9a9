"""The fp16 UNet graph keeps its fp32 islands: the timestep embedding, the box arithmetic up to the
masks, and the SAA gating/softmax branch carry fp32 tensors from end to end, and box edges that are
exact decimals (0.53 and 0.29 of 100 cells) land on the same cells as in the fp32 graph."""
from __future__ import annotations

from collections import deque

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx.utils import Extractor

from dynamicid_rt.export import build_engines
from dynamicid_rt.modelfiles.paths import ModelPaths

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=["onnx", "cuda_onnx"])
def graphs(request, tiny_bundle, tiny_engines) -> dict[str, onnx.ModelProto]:
    """The fp32 UNet graph and one graph of the fp16 entry: the plain one (TensorRT) or the one with
    fused attention (ONNX Runtime's CUDA provider), which must keep the same islands."""
    (fp16,) = build_engines(ModelPaths.from_folder(tiny_bundle), tiny_engines, precision="fp16", engines=["unet"])
    fp32 = tiny_engines / "unet-fp32" / "model.onnx"
    fp16_graph = getattr(fp16, request.param)
    return {p: onnx.shape_inference.infer_shapes(onnx.load(str(path))) for p, path in (("fp32", fp32), ("fp16", fp16_graph))}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)}
    return types | {i.name: i.data_type for i in g.initializer}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def _walk(model: onnx.ModelProto, start: list[str], stop) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Nodes reached forward from the values ``start`` (breadth first), not going past nodes for
    which ``stop(node)`` holds; returns (visited, stopped-at)."""
    consumers = _consumers(model)
    seen, visited, stopped = set(), [], []
    queue = deque(start)
    while queue:
        for node in consumers.get(queue.popleft(), ()):
            if node.name in seen:
                continue
            seen.add(node.name)
            if stop(node):
                stopped.append(node)
                continue
            visited.append(node)
            queue.extend(node.output)
    return visited, stopped


def _fp16_tensors(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[str]:
    types = _types(model)
    return [f"{n.op_type} {n.name}: {v}" for n in nodes for v in list(n.input) + list(n.output) if types.get(v) == TensorProto.FLOAT16]


def test_timestep_embedding_is_fp32(graphs):
    model = graphs["fp16"]
    weights = {i.name for i in model.graph.initializer}
    # Up to the first layer with weights (time_embedding.linear_1), entered through one Cast to fp16.
    def stop(node: onnx.NodeProto) -> bool:
        return _cast_to(node) == TensorProto.FLOAT16 or (node.op_type in ("Gemm", "MatMul") and node.input[1] in weights)

    visited, stopped = _walk(model, ["timestep"], stop)
    ops = {n.op_type for n in visited}
    assert {"Sin", "Cos", "Mul"} <= ops, ops
    assert not _fp16_tensors(model, visited)
    consumers = _consumers(model)
    for node in stopped:  # the only way out is the fp16 input of the embedding's first linear layer
        following = [node] if node.op_type != "Cast" else consumers[node.output[0]]
        assert all(f.op_type in ("Gemm", "MatMul") for f in following), node.name


def test_box_arithmetic_up_to_the_masks_is_fp32(graphs):
    model = graphs["fp16"]
    types = _types(model)
    # From the boxes to the boolean masks: boxes × grid + margin, Floor, comparisons with rows/columns.
    visited, _ = _walk(model, ["id_boxes"], lambda n: all(types.get(o) == TensorProto.BOOL for o in n.output))
    assert sum(n.op_type == "Floor" for n in visited) >= 2
    assert not _fp16_tensors(model, visited)
    assert not [n for n in visited if _cast_to(n) == TensorProto.FLOAT16]


def _depends_on(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Graph inputs each value is computed from (through values, not through Shape)."""
    deps = {i.name: {i.name} for i in model.graph.input}
    for node in model.graph.node:
        found = set() if node.op_type == "Shape" else set().union(*(deps.get(i, set()) for i in node.input))
        for out in node.output:
            deps[out] = found
    return deps


def test_saa_gating_and_softmax_branch_is_fp32(graphs):
    model = graphs["fp16"]
    deps = _depends_on(model)
    logits = [
        n for n in model.graph.node
        if n.op_type == "MatMul" and {"id_tokens"} <= deps.get(n.input[1], set()) and "sample" not in deps.get(n.input[1], set())
        and "sample" in deps.get(n.input[0], set()) and "id_tokens" not in deps.get(n.input[0], set())
    ]
    assert logits, "no q·k_z MatMul found"
    for matmul in logits:
        visited, stopped = _walk(model, list(matmul.output), lambda n: _cast_to(n) == TensorProto.FLOAT16)
        ops = {n.op_type for n in visited}
        assert {"ReduceSum", "ReduceMin", "ReduceMax", "Div", "Where", "Softmax", "MatMul"} <= ops, (matmul.name, ops)
        # The logits themselves come out of the fp16 MatMul; everything after them is fp32.
        fp16 = [t for t in _fp16_tensors(model, visited) if not t.endswith(": " + matmul.output[0])]
        assert not fp16, (matmul.name, fp16)
        # The branch leaves fp32 only to join the text branch (O_t + ...).
        consumers = _consumers(model)
        assert stopped and all(c.op_type == "Add" for n in stopped for c in consumers[n.output[0]]), matmul.name


def _box_cells(model: onnx.ModelProto, boxes: np.ndarray, latent: int) -> dict[str, np.ndarray]:
    """Each Floor of the graph (box edges in cells, and the grid factor k), by node name, computed by
    ONNX Runtime on the subgraph from the boxes and the latent's shape."""
    floors = {n.name: n.output[0] for n in model.graph.node if n.op_type == "Floor"}
    sub = Extractor(model).extract_model(["sample", "id_boxes"], list(floors.values()))
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"sample": np.zeros((1, 4, latent, latent), np.float32), "id_boxes": boxes}
    return dict(zip(floors, session.run(list(floors.values()), feed)))


def test_exact_decimal_box_edges_give_the_fp32_cells(graphs):
    # 0.53 is 0.5298 in fp16 and 0.29·100 is 28.999… in float64: both must still give cells 53 and 29.
    boxes = np.array([[0.53, 0.29, 1.0, 1.0], [0.0, 0.0, 0.53, 0.29]], np.float32)
    cells32 = _box_cells(graphs["fp32"], boxes, latent=100)
    cells16 = _box_cells(graphs["fp16"], boxes, latent=100)
    assert cells16.keys() == cells32.keys()
    for name, value in cells32.items():
        # fp32 in the fp16 graph too: ORT's CPU kernels may hide fp16 rounding that a GPU shows.
        assert cells16[name].dtype == np.float32 and np.array_equal(cells16[name], value), name
    full = [v for v in cells16.values() if v.shape == (2, 4) and v.max() == 100]
    assert full and np.array_equal(full[0], [[53, 29, 100, 100], [0, 0, 53, 29]])
