"""The models and test data shipped inside the package (see ``models/README.md``, the card).

Models are named ``<family>-<precision>[-tflite]``; a config names one of them or gives a path.
The config validates model names against this module, so it imports NumPy only to load the
samples: ``edgeagent config check`` and ``edgeagent fleet`` stay light.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["BUNDLED_MODELS", "N_CLASSES", "N_PIXELS", "PIXEL_MAX", "bundled_model_path",
           "load_bundled_samples", "model_path"]

N_PIXELS = 64  # 8x8 image, flattened row-major
N_CLASSES = 10
PIXEL_MAX = 16  # raw pixels count the set bits of a 4x4 block: 0..16

#: Bundled model name -> file in ``edgeagent/infer/models``.
BUNDLED_MODELS: dict[str, str] = {
    "digits-fp32": "digits_fp32.onnx",
    "digits-int8": "digits_int8.onnx",
    "digits-int8-tflite": "digits_int8.tflite",
    "digits-large-fp32": "digits_large_fp32.onnx",
    "digits-large-int8": "digits_large_int8.onnx",
    "digits-large-int8-tflite": "digits_large_int8.tflite",
}

_REGENERATE = "python scripts/make_digits_model.py --out edgeagent/infer/models"


def _resource(name: str) -> Path:
    resource = files("edgeagent.infer") / "models" / name
    if not isinstance(resource, Path):
        # The runtimes need a real file; setup.py installs package data as plain files.
        raise RuntimeError(f"edgeagent.infer must be installed as files, not zipped: {resource}")
    if not resource.is_file():
        raise FileNotFoundError(f"bundled file {resource} is missing; regenerate with "
                                f"`{_REGENERATE}`")
    return resource


def bundled_model_path(name: str = "digits-int8") -> Path:
    """Path of a bundled model by its name (``digits-int8``, ``digits-large-fp32``, ...)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; bundled: "
                         f"{', '.join(BUNDLED_MODELS)}")
    return _resource(BUNDLED_MODELS[name])


def model_path(model: str) -> Path:
    """A bundled model's name or a path to a ``.onnx``/``.tflite`` file, as a config gives it."""
    return bundled_model_path(model) if model in BUNDLED_MODELS else Path(model)


def load_bundled_samples() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The held-out test set: raw pixels uint8 (n, 64) in 0..16 and int64 labels (n,)."""
    import numpy as np

    with np.load(_resource("digits_test.npz"), allow_pickle=False) as npz:
        x = np.asarray(npz["x"], dtype=np.uint8)
        y = np.asarray(npz["y"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != N_PIXELS or y.shape != (x.shape[0],):
        raise ValueError(f"digits_test.npz is malformed: x {x.shape}, y {y.shape}")
    return x, y
