"""Exported models: a run as one ONNX or ``torch.export`` file, and the torch-free ONNX predictor.

- :func:`~headstart.export.exporter.export_run` (torch): writes the file, checks it against the run, records the
  figures in ``export.json``.
- :class:`~headstart.export.onnx_model.OnnxModel` (numpy, PIL and ONNX Runtime only): predicts with the file.
- :mod:`~headstart.export.metadata`: what the file carries (classes, preprocessing, temperature, ...).

Nothing is imported here, so ``from headstart.export.onnx_model import OnnxModel`` does not load torch.
"""
