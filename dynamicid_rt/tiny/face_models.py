"""Tiny insightface-loadable ONNX face models for the tiny test bundle (no torch, onnx.helper only).

They are named like the buffalo_l pack's files so that insightface routes them the same way:
``det_10g.onnx`` (SCRFD layout: strides 8/16/32, 2 anchors, score/bbox/kps outputs, dynamic input),
``w600k_r50.onnx`` (112x112 -> 512 recognition), ``2d106det.onnx`` (192x192 -> 212) and
``1k3d68.onnx`` (192x192 -> 3309). They are hand-built, not trained: every output is a fixed,
deterministic function of the pixels, keyed to the colours of :mod:`dynamicid_rt.tiny.portraits`.
The detector and landmark models first put the channels into the portraits' order (the one in
which the lips are red), so they find the same faces in RGB and BGR arrays, as insightface's real
models (nearly) do; recognition is left order-sensitive, like ArcFace.

- Detector: a smooth colour key marks skin pixels; at every anchor a window of the anchor's size
  and one twice as large measure how well the skin blob fits the window (full inside, empty
  around it), and the skin mass moments in the large window give the blob's centre and extent,
  hence the box and five keypoints at fixed positions of the face ellipse.
- Recognition: the aligned crop pooled to 7x7, weighted towards the centre, then a fixed random
  projection to 512 (different colours/shapes give different directions).
- Landmarks: moments of the skin key and of a lip-colour key inside the crop place a fixed face
  template (106 points) or insightface's own 68-point mean shape (so the head pose is frontal and
  finite).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..identity.faces import PACK_FILES

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime the project supports


STRIDES = (8, 16, 32)
ANCHOR_SIZES = {8: (16, 32), 16: (64, 128), 32: (256, 512)}  # SCRFD's base anchor sizes

# Face features in units of the face ellipse's semi-axes (x right, y down), shared with the
# portrait drawer so that detector keypoints and drawn features coincide.
EYE_CENTRES = ((-0.38, -0.12), (0.38, -0.12))
NOSE_TIP = (0.0, 0.22)
MOUTH_CENTRE = (0.0, 0.5)
MOUTH_CORNERS = ((-0.3, 0.5), (0.3, 0.5))
KPS_UNITS = np.array([EYE_CENTRES[0], EYE_CENTRES[1], NOSE_TIP, MOUTH_CORNERS[0], MOUTH_CORNERS[1]])

# Colour keys: (weights on R, G, B in 0..255, bias, softness); a pixel's key is the product of
# sigmoid((w.rgb + bias) / softness) over the rows.
SKIN_KEY = (
    ((1, -1, 0), -15.0, 4.0),  # R > G
    ((0, 1, -1), -10.0, 4.0),  # G > B
    ((1, 0, 0), -100.0, 8.0),  # bright enough (dark hair and shadows are not skin)
    ((-1, 1, 0), 75.0, 5.0),  # not red (lips)
    ((0, -1, 1), 70.0, 5.0),  # not yellow (sun, blond)
)
LIP_KEY = (
    ((1, -1, 0), -95.0, 4.0),  # R well above G (sharp: the many skin pixels must add nothing)
    ((1, 0, -1), -70.0, 5.0),  # R well above B
    ((1, 0, 0), -130.0, 6.0),
)

# Channel order: the lips are the one colour of the portraits that no other colour becomes when R
# and B are swapped (sky, clothes and lakes swapped look like skin), so a sharp lip key decides
# the order: swapped only when it finds clearly more lip pixels. Without lips in either order
# (no face) the detector sees no skin at all, so both orders give no face.
ORDER_KEY = (
    ((1, -1, 0), -100.0, 2.0),
    ((1, 0, -1), -80.0, 2.0),
    ((1, 0, 0), -140.0, 3.0),
)
_ORDER_MARGIN = 4.0  # lip pixels

_SCORE_GAIN = 12.0
_SCORE_OFFSET = 0.3


class _Graph:
    """Collects nodes and initializers with unique names (names never start with Sub/Mul, which
    insightface would read as an mxnet model with built-in normalisation)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}_{hint}_{self.count}"

    def const(self, value: np.ndarray | float | list, hint: str = "c", dtype=np.float32) -> str:
        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "t", **attrs) -> str:
        out = self._name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._name(op_type.lower()), **attrs))
        return out

    def op_to(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self._name(op_type.lower()), **attrs))
        return output

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dynamicid-rt-tiny")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def _colour_key(g: _Graph, x: str, key: tuple, mean: float, std: float) -> str:
    """(B,1,H,W) soft mask of the pixels matching ``key``; ``x`` holds (rgb - mean) / std."""
    weights = np.array([row[0] for row in key], dtype=np.float32)
    bias = np.array([row[1] for row in key], dtype=np.float32)
    soft = np.array([row[2] for row in key], dtype=np.float32)
    # w.rgb + b with rgb = x * std + mean, divided by the softness, as one 1x1 convolution.
    w = weights * std / soft[:, None]
    b = (bias + weights.sum(axis=1) * mean) / soft
    logits = g.op("Conv", [x, g.const(w[:, :, None, None], "keyw"), g.const(b, "keyb")], "keylogit")
    return g.op("ReduceProd", [g.op("Sigmoid", [logits], "keysig")], "key", axes=[1], keepdims=1)


def _canonical_order(g: _Graph, x: str, mean: float, std: float) -> tuple[str, str]:
    """``x`` (1,3,H,W) with its channels in the portraits' order (lips red) whichever order it came
    in, so that the models find the same faces in RGB and BGR arrays; and a (1,1,1,1) float that
    is 1 when either order shows lips, else 0."""
    swapped = g.op("Gather", [x, g.const([2, 1, 0], "rb", np.int64)], "swapped", axis=1)
    lips_as_given, lips_swapped = (
        g.op("ReduceSum", [_colour_key(g, t, ORDER_KEY, mean, std)], "lipsum", keepdims=1) for t in (x, swapped)
    )
    swap = g.op("Greater", [lips_swapped, g.op("Add", [lips_as_given, g.const(_ORDER_MARGIN)])], "swap")
    has_lips = g.op("Greater", [g.op("Max", [lips_as_given, lips_swapped]), g.const(_ORDER_MARGIN)], "haslips")
    return g.op("Where", [swap, swapped, x], "ordered"), g.op("Cast", [has_lips], "lipgate", to=TensorProto.FLOAT)


def _tensor(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# ---------------------------------------------------------------- detector (SCRFD layout)


def _window_kernel(stride: int) -> np.ndarray:
    """Conv weights (12, 1, L, L) over the stride's cell grid; channel groups of 2 (one per anchor):
    inner fill, outer fill, then the outer window's mass moments x, y, x^2, y^2 (pixels from the
    anchor point, normalised by the outer window's cell count)."""
    cells = [size // stride for size in ANCHOR_SIZES[stride]]
    length = 2 * max(cells)
    offsets = np.arange(length) - length // 2  # cell offset o covers pixels from the anchor point at o*stride
    dy, dx = np.meshgrid((offsets + 0.5) * stride, (offsets + 0.5) * stride, indexing="ij")
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    kernel = np.zeros((6, 2, length, length), dtype=np.float64)
    for a, k in enumerate(cells):
        inner = (ox >= -k // 2) & (ox < k // 2) & (oy >= -k // 2) & (oy < k // 2)
        outer = (ox >= -k) & (ox < k) & (oy >= -k) & (oy < k)
        n_outer = (2 * k) ** 2
        kernel[0, a] = inner / k**2
        kernel[1, a] = outer / n_outer
        kernel[2, a] = outer * dx / n_outer
        kernel[3, a] = outer * dy / n_outer
        kernel[4, a] = outer * dx**2 / n_outer
        kernel[5, a] = outer * dy**2 / n_outer
    return kernel.reshape(12, 1, length, length).astype(np.float32)


def _detector_level(g: _Graph, skin_cells: str, stride: int) -> tuple[str, str, str]:
    """Scores (n,1), box distances (n,4) and keypoint offsets (n,10) of one stride, in units of the
    stride as SCRFD emits them; n = cells * 2 anchors, anchor-minor."""
    kernel = _window_kernel(stride)
    length = kernel.shape[-1]
    pads = [length // 2, length // 2, length // 2 - 1, length // 2 - 1]
    win = g.op("Conv", [skin_cells, g.const(kernel, "win")], "win", pads=pads)
    inner, outer, mx, my, mxx, myy = (
        g.op("Slice", [win, g.const([2 * i], "s", np.int64), g.const([2 * i + 2], "e", np.int64), g.const([1], "ax", np.int64)], "part")
        for i in range(6)
    )
    # Fit: full inside the anchor-sized window, empty in the ring around it (twice the size).
    ring = g.op("Div", [g.op("Sub", [g.op("Mul", [outer, g.const(4.0)]), inner]), g.const(3.0)], "ring")
    fit = g.op("Sub", [inner, g.op("Mul", [ring, g.const(2.0)])], "fit")
    logit = g.op("Mul", [g.op("Sub", [fit, g.const(_SCORE_OFFSET)]), g.const(_SCORE_GAIN)])
    score = g.op("Sigmoid", [logit], "score")
    # Blob centre and semi-axes (2 sigma of a filled ellipse) relative to the anchor point.
    mass = g.op("Add", [outer, g.const(1e-6)], "mass")
    cx = g.op("Div", [mx, mass], "cx")
    cy = g.op("Div", [my, mass], "cy")
    semi = []
    for second, centre in ((mxx, cx), (myy, cy)):
        var = g.op("Sub", [g.op("Div", [second, mass]), g.op("Mul", [centre, centre])], "var")
        semi.append(g.op("Mul", [g.op("Sqrt", [g.op("Max", [var, g.const(1e-4)])]), g.const(2.0)], "semi"))
    # (1, 2, 4, h, w) -> (1, h, w, 2, 4) -> (n, 4): rows [cx, cy, ax, ay] per anchor.
    params = g.op("Concat", [g.op("Unsqueeze", [t, g.const([2], "ax", np.int64)]) for t in (cx, cy, *semi)], "params", axis=2)
    rows = g.op("Reshape", [g.op("Transpose", [params], perm=[0, 3, 4, 1, 2]), g.const([-1, 4], "shape", np.int64)], "rows")
    to_box = np.array([[-1, 0, 1, 0], [0, -1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=np.float32).T / stride
    to_kps = np.zeros((4, 10), dtype=np.float32)
    for i, (ux, uy) in enumerate(KPS_UNITS):
        to_kps[:, 2 * i] = [1, 0, ux, 0]
        to_kps[:, 2 * i + 1] = [0, 1, 0, uy]
    scores = g.op("Reshape", [g.op("Transpose", [score], perm=[0, 2, 3, 1]), g.const([-1, 1], "shape", np.int64)])
    boxes = g.op("MatMul", [rows, g.const(to_box, "tobox")])
    kps = g.op("MatMul", [rows, g.const(to_kps / stride, "tokps")])
    return scores, boxes, kps


def detector_model() -> onnx.ModelProto:
    g = _Graph("det")
    ordered, has_lips = _canonical_order(g, "input.1", 127.5, 128.0)
    skin = g.op("Mul", [_colour_key(g, ordered, SKIN_KEY, mean=127.5, std=128.0), has_lips], "skin")
    cells = {8: g.op("AveragePool", [skin], "cells8", kernel_shape=[8, 8], strides=[8, 8])}
    cells[16] = g.op("AveragePool", [cells[8]], "cells16", kernel_shape=[2, 2], strides=[2, 2])
    cells[32] = g.op("AveragePool", [cells[16]], "cells32", kernel_shape=[2, 2], strides=[2, 2])
    levels = [_detector_level(g, cells[s], s) for s in STRIDES]
    outputs = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for level, stride in enumerate(STRIDES):
            name = f"{kind}_{stride}"
            g.op_to("Identity", [levels[level][("score", "bbox", "kps").index(kind)]], name)
            outputs.append(_tensor(name, [f"n{stride}", width]))
    return g.model([_tensor("input.1", [1, 3, "height", "width"])], outputs, "tiny_scrfd")


# ---------------------------------------------------------------- recognition


def recognition_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    g = _Graph("rec")
    pooled = g.op("AveragePool", ["input.1"], "pool", kernel_shape=[16, 16], strides=[16, 16])  # (B,3,7,7)
    yy, xx = np.mgrid[0:7, 0:7] - 3.0
    centre = np.exp(-(xx**2 + yy**2) / (2 * 2.2**2))  # the face matters more than the background
    weighted = g.op("Mul", [pooled, g.const(centre[None, None])], "centred")
    flat = g.op("Flatten", [weighted], axis=1)
    proj = rng.standard_normal((147, 512)).astype(np.float32) / np.sqrt(147.0)
    g.op_to("MatMul", [flat, g.const(proj, "proj")], "fc1")
    return g.model([_tensor("input.1", ["None", 3, 112, 112])], [_tensor("fc1", ["None", 512])], "tiny_arcface")


# ---------------------------------------------------------------- landmarks


def _ring(n: int, cx: float, cy: float, rx: float, ry: float, start: float = 0.0, stop: float = 2 * np.pi) -> np.ndarray:
    closed = np.isclose(stop - start, 2 * np.pi)
    t = np.linspace(start, stop, n, endpoint=not closed)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def face_template_106() -> tuple[np.ndarray, np.ndarray]:
    """106 points: (face-ellipse units, lip-ellipse units) split as a mask, in insightface's rough
    order (contour, brows, eyes, nose, mouth). Returns (points (106,2), on_mouth (106,) bool)."""
    contour = _ring(33, 0.0, 0.0, 1.0, 1.0, np.pi + 0.15, -0.15)  # ear to ear through the chin (y down)
    brows = [np.stack([np.linspace(s * 0.15, s * 0.62, 9), -0.33 - 0.07 * np.sin(np.linspace(0, np.pi, 9))], 1) for s in (-1, 1)]
    eyes = [_ring(10, ex, ey, 0.16, 0.07) for ex, ey in EYE_CENTRES]
    bridge = np.stack([np.zeros(5), np.linspace(-0.1, 0.18, 5)], 1)
    nostrils = _ring(10, NOSE_TIP[0], NOSE_TIP[1] + 0.04, 0.15, 0.06, 0.0, np.pi)
    face = np.concatenate([contour, *brows, *eyes, bridge, nostrils])
    mouth = np.concatenate([_ring(12, 0.0, 0.0, 1.0, 1.0), _ring(8, 0.0, 0.0, 0.6, 0.35)])
    points = np.concatenate([face, mouth]).astype(np.float32)
    on_mouth = np.arange(len(points)) >= len(face)
    return points, on_mouth


def _meanshape_68() -> np.ndarray:
    from insightface.data import get_object  # the pose is measured against this very shape

    return np.asarray(get_object("meanshape_68.pkl"), dtype=np.float32)


def _landmark_params(g: _Graph) -> str:
    """(1, 8) = face centre x,y, face semi-axes x,y, lip centre x,y, lip semi-axes x,y in the crop's
    normalised coordinates ([-1, 1], as insightface decodes them)."""
    ordered = _canonical_order(g, "data", 127.5, 128.0)[0]
    keys = [_colour_key(g, ordered, key, mean=127.5, std=128.0) for key in (SKIN_KEY, LIP_KEY)]
    both = g.op("Concat", keys, axis=1)
    cells = g.op("AveragePool", [both], "cells", kernel_shape=[4, 4], strides=[4, 4])  # (1,2,48,48)
    flat = g.op("Reshape", [cells, g.const([1, 2, 48 * 48], "shape", np.int64)])
    u = (np.arange(48) * 4 + 2) / 96.0 - 1.0
    yy, xx = np.meshgrid(u, u, indexing="ij")
    basis = np.stack([np.ones_like(xx), xx, yy, xx**2, yy**2], axis=-1).reshape(-1, 5)
    moments = g.op("MatMul", [flat, g.const(basis, "basis")], "moments")  # (1,2,5)
    # A faint prior (face in the middle, lips below) keeps empty crops finite.
    prior_w = 1e-3
    prior = np.array([[1, 0, 0, 0.09, 0.09], [1, 0, 0.3, 0.01, 0.09 + 0.0004]], dtype=np.float32) * prior_w
    moments = g.op("Add", [moments, g.const(prior[None], "prior")])
    m = [g.op("Slice", [moments, g.const([i], "s", np.int64), g.const([i + 1], "e", np.int64), g.const([2], "ax", np.int64)]) for i in range(5)]
    cx, cy = g.op("Div", [m[1], m[0]]), g.op("Div", [m[2], m[0]])
    semi = []
    for second, centre in ((m[3], cx), (m[4], cy)):
        var = g.op("Sub", [g.op("Div", [second, m[0]]), g.op("Mul", [centre, centre])])
        semi.append(g.op("Mul", [g.op("Sqrt", [g.op("Max", [var, g.const(1e-6)])]), g.const(2.0)]))
    params = g.op("Concat", [cx, cy, *semi], axis=2)  # (1, 2, 4): rows face, lips
    return g.op("Reshape", [params, g.const([1, 8], "shape", np.int64)], "params")


def _place(points: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(8, 2n) matrix taking the params to interleaved x, y of points in ellipse units; ``source``
    is 0 for face-ellipse points and 1 for lip-ellipse points."""
    out = np.zeros((8, 2 * len(points)), dtype=np.float32)
    for i, ((ux, uy), s) in enumerate(zip(points, source)):
        base = 4 * int(s)
        out[base + 0, 2 * i] = 1.0
        out[base + 2, 2 * i] = ux
        out[base + 1, 2 * i + 1] = 1.0
        out[base + 3, 2 * i + 1] = uy
    return out


def landmark_106_model() -> onnx.ModelProto:
    g = _Graph("lmk")
    params = _landmark_params(g)
    points, on_mouth = face_template_106()
    g.op_to("MatMul", [params, g.const(_place(points, on_mouth), "place")], "fc1")
    return g.model([_tensor("data", [1, 3, 192, 192])], [_tensor("fc1", [1, 212])], "tiny_2d106")


def landmark_68_model() -> onnx.ModelProto:
    g = _Graph("l3d")
    params = _landmark_params(g)
    shape = _meanshape_68()
    # Mean shape scaled onto the face ellipse (x: contour width; y: eyes at -0.12, chin at 1);
    # a pure per-axis scale and shift, so insightface recovers a frontal, finite head pose.
    sx = 1.0 / 0.63
    sy = 1.12 / 0.89
    place = np.zeros((8, 68 * 3), dtype=np.float32)
    for i, (x, y, z) in enumerate(shape):
        place[0, 3 * i] = 1.0
        place[2, 3 * i] = x * sx
        place[1, 3 * i + 1] = 1.0
        place[3, 3 * i + 1] = y * sy + 0.27
        place[2, 3 * i + 2] = z * sx
    pts = g.op("MatMul", [params, g.const(place, "place")])
    # insightface keeps only the last 68 of the 1103 points of the 3309 outputs.
    g.op_to("Pad", [pts, g.const([0, 3309 - 68 * 3, 0, 0], "pads", np.int64)], "fc1")
    return g.model([_tensor("data", [1, 3, 192, 192])], [_tensor("fc1", [1, 3309])], "tiny_1k3d68")


def _save_atomic(model: onnx.ModelProto, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_face_models(pack_dir: Path, seed: int = 0) -> list[Path]:
    """Write the four tiny buffalo_l-like models into ``pack_dir``; returns their paths."""
    pack_dir = Path(pack_dir)
    pack_dir.mkdir(parents=True, exist_ok=True)
    models = {
        "detection": detector_model(),
        "recognition": recognition_model(seed),
        "landmark_2d_106": landmark_106_model(),
        "landmark_3d_68": landmark_68_model(),
    }
    paths = []
    for task, model in models.items():
        path = pack_dir / PACK_FILES[task]
        _save_atomic(model, path)
        paths.append(path)
    return paths
