"""Local inference: one model interface over onnxruntime and LiteRT (``model``, ``ort``,
``litert``), the bundled models (``bundled``), the digits workload (``classifier``), and the
benchmark that measures them (``bench``).

Nothing is re-exported here: importing ``edgeagent.infer.bundled`` for a model's name (as the
config does) must not load onnxruntime and NumPy into ``edgeagent config check`` or
``edgeagent fleet``.
"""
