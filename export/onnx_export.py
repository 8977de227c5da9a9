"""Export one contract engine (SPEC §4) from its PyTorch module to ONNX, and derive fp16 variants.

Names, dynamic axes and sample inputs come only from :mod:`dynamicid_rt.contract`, so the graphs
cannot drift from what the backends feed them. This module imports torch; the engine cache imports
it lazily, only when something has to be built.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import torch

from dynamicid_rt.contract import EngineSpec, ModelDims
from dynamicid_rt.errors import DynamicIDError, NumericalError

from .progress import StageClock

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

OPSET = 18
# protobuf cannot hold more than 2 GiB: larger graphs keep their weights in one side file.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_SUFFIX = ".data"

# Kept in fp32 inside fp16 graphs: softmax and normalisation statistics (attention, LayerNorm,
# the VAE's GroupNorm), the SAA gating sum and its min-max normalisation, and the sinusoidal
# timestep embedding (sin/cos of arguments up to ~1000 lose all precision in fp16).
FP16_KEEP_FP32_OPS = (
    "Softmax",
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceMin",
    "ReduceMax",
    "Pow",
    "Sqrt",
    "Exp",
    "Sin",
    "Cos",
    "Range",
    "CumSum",
)


def to_torch_inputs(spec: EngineSpec, arrays: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Contract inputs as torch tensors, in contract order (the modules' ``forward`` order)."""
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in spec.input_names)


def run_torch(module: torch.nn.Module, spec: EngineSpec, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``module`` on contract inputs; returns its outputs by contract name (the parity reference)."""
    with torch.inference_mode():
        out = module(*to_torch_inputs(spec, arrays))
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    if len(outs) != len(spec.outputs):
        raise NumericalError(
            f"the {spec.name} module returned {len(outs)} output(s), the contract has {len(spec.outputs)} "
            f"({', '.join(spec.output_names)}): the module does not implement the engine contract"
        )
    return {name: t.detach().float().cpu().numpy() for name, t in zip(spec.output_names, outs)}


def export_engine(
    module: torch.nn.Module,
    spec: EngineSpec,
    dims: ModelDims,
    out_path: Path,
    opset: int = OPSET,
    check_at: Sequence[Mapping[str, int]] = (),
    tolerance: float = 1e-3,
    record: dict[str, Any] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Export ``module`` (fp32, eval mode) as ``out_path``: traced on the contract's sample inputs
    at the opt shapes, with its dynamic axes; constant-folded, shape-inferred and checked. Graphs over
    2 GiB keep their weights in ``<out_path>.data``.

    ``check_at``: axis values at which the graph must match the module (see :func:`compare_with_torch`),
    checked on the session that folded the graph, so the check costs no second session. ``record``
    is filled with the seconds of each stage (``seconds``) and the measured ``parity_relative_error``;
    ``on_stage`` is told each stage as it starts."""
    out_path = Path(out_path)
    clock = StageClock(on_stage)
    args = to_torch_inputs(spec, spec.sample_inputs(dims))
    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="onnx-raw-", dir=out_path.parent) as raw_dir:
        raw = Path(raw_dir) / "raw.onnx"
        with clock.stage("trace", "tracing"), warnings.catch_warnings(), torch.no_grad():
            # TorchScript tracing: seconds where torch.export takes minutes on a UNet. Its warnings
            # about Python values frozen into the trace are checked for real by the build's parity
            # check at other shapes; here they would only drown the log.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(raw), input_names=spec.input_names, output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(), opset_version=opset, dynamo=False, do_constant_folding=True,
            )
        # Folded straight into place, weights in their final file: only the small graph is rewritten below.
        with clock.stage("fold", "folding constants"):
            session = _fold_constants(raw, out_path)
    with clock.stage("save"):
        model = onnx.load(str(out_path), load_external_data=False)
        _drop_unused_opsets(model)
        _check_names(model, spec)
        onnx.save_model(model, str(out_path))  # external weights stay where the folding wrote them
        del model
    if check_at:
        with clock.stage("parity", "checking parity"):
            error = compare_with_torch(session, module, spec, dims, list(check_at), tolerance)
        if record is not None:
            record["parity_relative_error"] = error
    del session
    with clock.stage("check", "checking the graph"):
        _infer_and_check(out_path)
    if record is not None:
        record["seconds"] = clock.seconds
    return out_path


def _fold_constants(src: Path, dst: Path) -> "ort.InferenceSession":
    """Constant folding, redundant-node elimination and Conv+BN/Add/Mul folding with ONNX Runtime's
    "basic" level, which only rewrites into standard ONNX ops (portable to TensorRT); shape
    subgraphs on static dims collapse to constants. Much faster than onnxscript's optimizer. Writes
    ``dst`` (weights in ``<dst>.data`` where :func:`save_model` would put them there) and returns
    the session, which runs that same optimized graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    data = dst.with_name(dst.name + EXTERNAL_DATA_SUFFIX)
    data.unlink(missing_ok=True)
    if sum(f.stat().st_size for f in src.parent.iterdir()) > PROTOBUF_LIMIT - (64 << 20):
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data.name)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    """ONNX Runtime declares all its domains in the saved graph; keep only those nodes use."""
    used = {node.domain for node in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _check_names(model: onnx.ModelProto, spec: EngineSpec) -> None:
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != spec.input_names or outputs != spec.output_names:
        raise DynamicIDError(
            f"exported {spec.name} graph has inputs {inputs} and outputs {outputs}; the contract wants "
            f"{spec.input_names} and {spec.output_names} (an input unused by the module is dropped by the "
            "exporter: the module must use every contract input)"
        )


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save ``model``; weights go to ``<path>.data`` when the graph would pass protobuf's 2 GiB."""
    path = Path(path)
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    external = weights > PROTOBUF_LIMIT - (64 << 20)  # headroom for the graph itself
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    data.unlink(missing_ok=True)
    onnx.save_model(
        model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
        location=data.name, size_threshold=1024,
    )


def _infer_and_check(path: Path) -> None:
    """Shape inference in place (path-based, so graphs over 2 GiB work) and the ONNX checker."""
    onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, data_prop=True)
    onnx.checker.check_model(str(path), full_check=True)


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 copy of the fp32 graph ``src`` for GPU providers: fp32 inputs and outputs, weights and
    most ops in fp16; :data:`FP16_KEEP_FP32_OPS` and the fp32 islands of :mod:`.fp16_islands` (control
    arithmetic, timestep embedding, SAA gating and softmax) in fp32. Raises NumericalError when a
    weight does not fit fp16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .fp16_islands import drop_fp16_round_trips, fp32_island_nodes

    model = onnx.load(str(src), load_external_data=True)
    for init in model.graph.initializer:
        # Small constants may be -inf/large mask fills, which the converter clamps to the fp16 range
        # harmlessly (softmax stays fp32); a real weight out of range would change the model.
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) > 16:
            values = onnx.numpy_helper.to_array(init)
            if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
                raise NumericalError(
                    f"weight {init.name} of {src} holds values outside the fp16 range; use --precision fp32"
                )
    island = fp32_island_nodes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values clamped to fp16 range" for tiny weights: expected
        # The fp32 graph was saved with its inferred shapes (_infer_and_check); the converter's own
        # in-memory inference would serialize the model, which fails above 2 GB (a full SD1.5 UNet).
        half = convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=True, op_block_list=list(FP16_KEEP_FP32_OPS),
            node_block_list=sorted(island),
        )
    # Blocked nodes still pass fp16 between them: keep the islands fp32 from end to end.
    drop_fp16_round_trips(half.graph)
    # The converter appends its Cast nodes at the end and leaves some intermediate types stale:
    # restore the topological order ONNX requires and let shape inference recompute the types.
    _sort_topologically(half.graph)
    del half.graph.value_info[:]
    save_model(half, Path(dst))
    _infer_and_check(Path(dst))
    return Path(dst)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (Kahn)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    waiting_on = [0] * len(graph.node)
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in set(node.input):
            if name in producer:
                waiting_on[i] += 1
                consumers.setdefault(producer[name], []).append(i)
    ready = [i for i, n in enumerate(waiting_on) if n == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in consumers.get(i, ()):
            waiting_on[j] -= 1
            if waiting_on[j] == 0:
                ready.append(j)
    if len(order) != len(graph.node):
        raise DynamicIDError("the fp16 graph has a cycle: the fp16 conversion failed")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def check_finite(path: Path, spec: EngineSpec, dims: ModelDims) -> bool:
    """Run the graph in ONNX Runtime (CPU) on sample inputs and raise NumericalError on NaN/inf.
    Returns False when this onnxruntime build cannot run the graph on the CPU (fp16 kernels are
    missing from many CPU builds); the backend then checks outputs on the GPU."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # NOT_IMPLEMENTED: no CPU kernel for an fp16 op
        log.info("cannot check %s on the CPU (%s); the backend checks its outputs at run time", path.name, exc)
        return False
    # The smallest shapes: fp16 kernels are slow on CPUs, and overflow does not depend on size here.
    outputs = session.run(spec.output_names, spec.sample_inputs(dims, seed=1, **{a.name: a.min for a in spec.axes}))
    for name, value in zip(spec.output_names, outputs):
        if not np.isfinite(value).all():
            raise NumericalError(f"{spec.name} ({path.name}) produced NaN/inf in {name!r} on sample inputs")
    return True


def compare_with_torch(
    graph: "Path | ort.InferenceSession", module: torch.nn.Module, spec: EngineSpec, dims: ModelDims,
    shape_points: list[dict[str, int]], tolerance: float,
) -> float:
    """Largest relative error (max |onnx - torch| / max |torch|) of the graph in ONNX Runtime CPU
    against ``module`` over the given axis values; raises NumericalError above ``tolerance``.
    ``graph``: the ONNX file, or a session already running it."""
    import onnxruntime as ort

    session = graph if isinstance(graph, ort.InferenceSession) else ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, point in enumerate(shape_points):
        inputs = spec.sample_inputs(dims, seed=10 + i, **point)
        ref = run_torch(module, spec, inputs)
        try:
            got = dict(zip(spec.output_names, session.run(spec.output_names, inputs)))
        except Exception as exc:  # e.g. a Gather out of bounds in a graph traced for another size
            raise NumericalError(
                f"exported {spec.name} differs from the PyTorch module at {point or 'opt shapes'}: ONNX Runtime "
                f"fails on it ({str(exc).splitlines()[0][:300]}); the module has shape-dependent Python logic the "
                "tracer froze, or an op exports wrongly"
            ) from exc
        for name in spec.output_names:
            err = relative_error(got[name], ref[name])
            worst = max(worst, err)
            if not err <= tolerance:
                raise NumericalError(
                    f"exported {spec.name} differs from the PyTorch module at {point or 'opt shapes'}: output "
                    f"{name!r} relative error {err:.2e} > {tolerance:.0e}; the module has shape-dependent Python "
                    "logic the tracer froze, or an op exports wrongly"
                )
    return worst


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    if got.shape != ref.shape:
        return float("inf")
    scale = float(np.abs(ref).max(initial=0.0)) or 1.0
    return float(np.abs(got.astype(np.float64) - ref).max(initial=0.0)) / scale
