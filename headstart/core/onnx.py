"""ONNX in one place: torch's dynamo exporter and ONNX Runtime's session factory.

Three things run a network through ONNX Runtime: ``headstart export`` (its parity check), ``predict``/``serve``
on an exported ``.onnx`` file (:class:`headstart.predict.onnx.OnnxModel`) and large fp32 eval passes on a CPU
(:class:`headstart.features.forward.OnnxForward`). They all get their sessions from :func:`make_session` and their
graphs from :func:`export_onnx`, the dynamo exporter (``torch.onnx.export(..., dynamo=True)``; the TorchScript
exporter is deprecated).

``HEADSTART_ORT_THREADS`` sets ONNX Runtime's intra-op threads (default: as many as PyTorch uses, or ONNX Runtime's
own choice where torch is not loaded); it is read once, when this module is imported.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stdout
from importlib.util import find_spec
from pathlib import Path

from headstart.core.errors import UsageError, WeightsError

ORT_THREADS = int(os.environ["HEADSTART_ORT_THREADS"]) if os.environ.get("HEADSTART_ORT_THREADS", "").isdigit() \
    else None


def has_onnxruntime() -> bool:
    """Whether ONNX Runtime and onnx (which the exporter needs) are installed."""
    return find_spec("onnxruntime") is not None and find_spec("onnx") is not None


def make_session(model: str | Path | bytes, threads: int | None = None, spin: bool = True):
    """An ONNX Runtime CPU session for a model file or its bytes.

    Args:
        threads: intra-op threads; default ``HEADSTART_ORT_THREADS``, else ONNX Runtime's choice.
        spin: let idle threads spin between calls (ONNX Runtime's default). Off for passes that decode images
            between batches, so the decoding gets the cores.

    Raises:
        UsageError: ONNX Runtime is not installed.
        WeightsError: the file is not an ONNX model ONNX Runtime can load (one sentence, not its traceback).
    """
    try:
        import onnxruntime as ort  # optional at import time: the torch-free cached path never needs it
    except ModuleNotFoundError:
        raise UsageError("running an ONNX model needs ONNX Runtime: pip install onnxruntime onnx") from None
    from onnxruntime.capi import onnxruntime_pybind11_state as errors  # part of onnxruntime, loaded with it

    options = ort.SessionOptions()
    threads = threads or ORT_THREADS
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except (errors.Fail, errors.InvalidProtobuf, errors.InvalidGraph, errors.InvalidArgument,
            errors.NotImplemented, errors.NoSuchFile) as exc:
        reason = str(exc).strip().splitlines()[0].split(" : ")[-1][:200] if str(exc).strip() else type(exc).__name__
        name = "the exported graph" if isinstance(model, bytes) else str(model)
        raise WeightsError(f"{name} cannot be loaded as an ONNX model ({reason}).") from None


def export_onnx(module, example, input_name: str = "x", output_names: tuple[str, ...] = ("y",),
                metadata: dict[str, str] | None = None, path: str | Path | None = None) -> bytes | None:
    """``module`` (eval mode) as an ONNX graph by torch's dynamo exporter, the batch dimension dynamic, weights
    inside: written to ``path``, or returned as bytes when ``path`` is None. The exporter's progress lines go to
    stderr, so a command's stdout (``--json``) stays clean."""
    import torch  # the caller has torch loaded already; here only so that importing this module does not

    if example.shape[0] < 2:  # an example batch of 1 makes torch.export specialise the batch dimension to 1
        example = example[:1].expand(2, *example.shape[1:]).contiguous()
    with redirect_stdout(sys.stderr):
        program = torch.onnx.export(module, (example,), input_names=[input_name], output_names=list(output_names),
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                    dynamo=True, verbose=False, optimize=True)
    if metadata:
        program.model.metadata_props.update(metadata)
    if path is not None:
        program.save(str(path), external_data=False)
        return None
    import onnx  # a dependency of the dynamo exporter, so present whenever it ran

    buffer = io.BytesIO()
    onnx.save(program.model_proto, buffer)
    return buffer.getvalue()
