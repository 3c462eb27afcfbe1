"""Local inference: one model interface over onnxruntime and LiteRT, the bundled models, the
digits workload, and the benchmark that measures them."""

from edgeagent.infer.bundled import (
    BUNDLED_MODELS,
    N_CLASSES,
    N_PIXELS,
    PIXEL_MAX,
    bundled_model_path,
    load_bundled_samples,
    model_path,
)
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.infer.model import Model, Quantization, TensorSpec, load_model
from edgeagent.infer.ort import OnnxModel, session_options

__all__ = [
    "BUNDLED_MODELS",
    "N_CLASSES",
    "N_PIXELS",
    "PIXEL_MAX",
    "DigitsClassifier",
    "Model",
    "OnnxModel",
    "Quantization",
    "TensorSpec",
    "bundled_model_path",
    "load_bundled_samples",
    "load_model",
    "model_path",
    "session_options",
]
