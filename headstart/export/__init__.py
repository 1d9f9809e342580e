"""Exported models: a run as one ONNX or ``torch.export`` file, and the torch-free ONNX predictor.

- :func:`~headstart.export.exporter.export_run` (torch): writes the file, checks it against the run, records the
  figures in ``export.json``.
- :class:`~headstart.predict.onnx.OnnxModel` (numpy, PIL and ONNX Runtime only): predicts with the file.
- :mod:`~headstart.predict.metadata`: what the file carries (classes, preprocessing, temperature, ...).

Nothing is imported here, so ``from headstart.predict.onnx import OnnxModel`` does not load torch.
"""
