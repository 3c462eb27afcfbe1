"""The digits workload: raw 8x8 pixel counts in, top-k classes and probabilities out."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgeagent.infer.bundled import N_CLASSES, N_PIXELS, PIXEL_MAX, model_path
from edgeagent.infer.model import Model, load_model
from edgeagent.kernels import softmax_topk


class DigitsClassifier:
    """The bundled 8x8 digits model: raw pixel counts in, top-k classes and probabilities out.

    Scaling to [0, 1] happens here, and softmax + top-k in the agent's kernel rather than in
    the graph, so the fp32 and int8 models share one pre- and post-processing path.
    """

    def __init__(self, model: Model) -> None:
        if model.input.shape[1:] != (N_PIXELS,):
            raise ValueError(f"{model.path.name}: input {model.input.name!r} has shape "
                             f"{list(model.input.shape)}; the digits workload needs [N, "
                             f"{N_PIXELS}] (8x8 pixels / 16)")
        self._model = model

    @classmethod
    def load(cls, model: str = "digits-int8", threads: int = 1) -> DigitsClassifier:
        """A bundled model by name (int8 ONNX is the default workload) or a model file."""
        return cls(load_model(model_path(model), threads=threads))

    @property
    def model(self) -> Model:
        return self._model

    def logits(self, pixels_raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Raw logits, shape (batch, 10) or (10,) for a single image of shape (64,)."""
        x = np.asarray(pixels_raw)
        if x.ndim not in (1, 2) or x.shape[-1] != N_PIXELS:
            raise ValueError(f"expected raw pixels of shape ({N_PIXELS},) or (batch, {N_PIXELS}), "
                             f"got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"expected numeric pixel counts 0..{PIXEL_MAX}, got dtype {x.dtype}")
        # The same arithmetic as the training script: float32(raw) / 16 (exact, a power of 2).
        scaled = x.reshape(-1, N_PIXELS).astype(np.float32) / np.float32(PIXEL_MAX)
        out = self._model.run(scaled)
        return out[0] if x.ndim == 1 else out

    def classify(self, pixels_raw: npt.ArrayLike, k: int = 1
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-k classes (descending) and their softmax probabilities.

        ``pixels_raw``: counts 0..16, shape (batch, 64) -> results (batch, k); shape (64,) ->
        results (k,).
        """
        if not 1 <= k <= N_CLASSES:
            raise ValueError(f"k must be in 1..{N_CLASSES}, got {k}")
        logits = self.logits(pixels_raw)
        if logits.shape[0] == 0:  # empty batch: nothing for the kernel to do
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        indices, probs = softmax_topk(logits, k)
        return indices, probs

    def __repr__(self) -> str:
        return f"DigitsClassifier({self._model!r})"
