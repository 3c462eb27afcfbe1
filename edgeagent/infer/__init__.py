"""Local inference: the bundled digits model (fp32 and int8 ONNX) and the runtime that runs it."""

from edgeagent.infer.runtime import (
    N_CLASSES,
    N_PIXELS,
    PIXEL_MAX,
    DigitsClassifier,
    OnnxModel,
    Variant,
    bundled_model_path,
    load_bundled_samples,
    session_options,
)

__all__ = [
    "N_CLASSES",
    "N_PIXELS",
    "PIXEL_MAX",
    "DigitsClassifier",
    "OnnxModel",
    "Variant",
    "bundled_model_path",
    "load_bundled_samples",
    "session_options",
]
