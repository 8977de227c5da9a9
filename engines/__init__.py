"""TensorRT plans built from the exported ONNX graphs (layer 3 of SPEC §6, beside ``export``).

Every name, dynamic axis and min/opt/max range comes from the engine declarations of
``dynamicid_rt.contract``, as for the exporter, so nothing is written twice.

The builder uses the TensorRT Python API directly rather than polygraphy's loaders: TensorRT 11
removed the precision flags that polygraphy's ``CreateConfig(fp16=...)`` sets, TensorRT 10 needs
its fp32 layers pinned by hand, recognising out-of-memory builds needs our own TensorRT logger, and
the run-time side (user-managed context memory shared by engines, CUDA graphs, refit) needs the
TensorRT API anyway. One library surface keeps both sides, and the stand-in the tests use, small.

Modules: ``library`` (import TensorRT, the install command), ``profiles`` (profiles, shapes),
``plans`` (the plan cache: keys, validation, atomic writes), ``builder`` (one plan from one graph),
``refit`` (new weights into a built plan), ``build`` (reuse/refit/build every engine), ``cli``
(``build-engines --backend tensorrt``), ``cuda`` (device memory, streams, CUDA graphs), ``engine``
(one plan at run time), ``report`` (``doctor``).
Importing this package imports neither TensorRT nor CUDA.
"""
from .builder import BuildSettings, EngineBuildError
from .library import TensorRTUnavailable, install_command
from .profiles import StaticSize

__all__ = ["BuildSettings", "EngineBuildError", "StaticSize", "TensorRTUnavailable", "install_command"]
