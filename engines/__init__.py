"""TensorRT plans built from the exported ONNX graphs (layer 3 of SPEC §6, beside ``export``), with
data-center TensorRT 10/11 or TensorRT for RTX 1.x, each described once in ``library``.

Every name, dynamic axis and min/opt/max range comes from the engine declarations of
``dynamicid_rt.contract``, as for the exporter, so nothing is written twice.

The builder uses the TensorRT Python API directly rather than polygraphy's loaders: TensorRT 11
removed the precision flags that polygraphy's ``CreateConfig(fp16=...)`` sets, TensorRT 10 needs
its fp32 layers pinned by hand, recognising out-of-memory builds needs our own TensorRT logger, and
the run-time side (user-managed context memory shared by engines, CUDA graphs, refit) needs the
TensorRT API anyway. One library surface keeps both sides, and the stand-in the tests use, small.

Modules: ``library`` (the two libraries' declarations, importing one, the install command),
``profiles`` (profiles, shapes), ``plans`` (the plan cache: keys, validation, atomic writes),
``builder`` (one plan from one graph), ``refit`` (new weights into a built plan), ``validity``
(does a stored plan suit this GPU), ``build`` (reuse/refit/build every engine), ``cli``
(``build-engines --backend tensorrt|tensorrt-rtx``), ``cuda`` (device memory, streams, CUDA
graphs), ``runtime_cache`` (TensorRT-RTX's just-in-time kernels, kept per GPU and driver),
``engine`` (one plan at run time), ``context_memory`` (the contexts' shared scratch block, sized per
request shape; plans that cannot fit the card), ``memory_report`` (each stored plan's context memory,
for ``doctor``), ``report`` (``doctor``).
Importing this package imports neither TensorRT nor CUDA.
"""
from .builder import BuildSettings, EngineBuildError
from .library import LIBRARIES, TensorRTLibrary, TensorRTUnavailable, install_command
from .profiles import StaticSize

__all__ = [
    "LIBRARIES", "BuildSettings", "EngineBuildError", "StaticSize", "TensorRTLibrary", "TensorRTUnavailable", "install_command",
]
