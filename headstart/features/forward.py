"""The eval-mode forward pass, made fast: BatchNorm folded into the convolutions, or the graph run by ONNX Runtime.

A network in eval mode computes ``bn(conv(x))`` with fixed statistics, an affine map that folds into the
convolution's weights and bias (torch's :func:`~torch.nn.utils.fusion.fuse_conv_bn_eval` does the arithmetic). Every
pass that does not train (feature extraction, validation, evaluate, predict) gets a folded copy; the module that
trains is never touched.

Measured on a 2-core AMD EPYC without native bf16 (``python benchmarks/backbone_speed.py``), EfficientNet-Lite0,
batch 32, fp32: eager channels-last 26 img/s at 224 px; folded 37 img/s; ONNX Runtime (which folds BatchNorm and
fuses the activations itself, with its own depthwise kernels) 65 img/s. So on a CPU computing in fp32, passes over
enough images go through ONNX Runtime. Exporting the graph with the dynamo exporter costs about 11 s for Lite0 (4 s
with the deprecated TorchScript exporter, which is no longer used): at 11.6 ms saved per 224 px image that pays from
about 920 images at 224 px (46 million pixels); at 64 px ONNX Runtime gains too little to ever pay for it. Smaller
passes stay with the folded PyTorch copy. Both agree with the unfolded network
to ~1e-5 (float rounding), which is why the feature cache does not tell them apart.

``HEADSTART_ENGINE`` chooses: ``auto`` (the rule above), ``torch`` (always the folded PyTorch copy) or
``onnxruntime`` (always, whatever the size; an error where it cannot run).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
import weakref
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from headstart.core.choices import engine_setting
from headstart.core.errors import UsageError
from headstart.core.onnx import export_onnx, has_onnxruntime, make_session
from headstart.core.runtime import Runtime
from headstart.zoo.model import TransferModel

ORT_MIN_PIXELS = 46_000_000  # images x height x width from which exporting to ONNX Runtime pays (see above)
# Images per PyTorch call in a CPU feature pass. EfficientNet-Lite0 in bf16 on a 2-core EPYC (AVX-512 BF16), CPU ms
# per image on one thread: 2.4 at batch 16, 2.6 at 32, 3.2 at 64 (128 px); 7.2, 9.2 and 12.0 at 224 px: a smaller
# batch's activations stay in the caches between layers. ONNX Runtime's best chunk is 16 too (OnnxForward.CHUNK).
CPU_CHUNK = 16
_EXPORT_FAILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> input sizes it cannot export at


def fold_batchnorm(module: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``module`` with every BatchNorm that reads a convolution's output folded into it, or
    ``module`` itself when nothing folds.

    Which BatchNorm reads which convolution is seen, not guessed from the order of the attributes: one eval pass
    over ``example`` records each convolution's output and each BatchNorm's input. timm's ``BatchNormAct2d`` keeps
    its activation (and dropout) after the fold. Modules that run more than once, parametrized convolutions
    (weight norm) and models that cannot be copied are left alone. A last pass checks the copy against the network;
    where they disagree (a convolution whose output is also used elsewhere, say) ``module`` is returned: slower,
    never different.

    Returns:
        (the copy or ``module``, how many BatchNorms were folded).
    """
    pairs, reference = _conv_bn_pairs(module, example)
    if not pairs:
        return module, 0
    try:
        model = copy.deepcopy(module).eval()
        for conv, bn in pairs:
            _fold(model, conv, bn)
        with torch.no_grad(), torch.autocast(example.device.type, enabled=False):
            out = model(example.float())
    except Exception:  # noqa: BLE001 (cannot be copied or refolded: the unfolded network computes the same)
        return module, 0
    # The check is for a wrong pairing (errors of the order of the values); TF32 convolutions on GPUs round more.
    scale = max(1.0, reference.abs().max().item()) * (1e-4 if example.device.type == "cpu" else 1e-2)
    if out.shape != reference.shape or not torch.allclose(out, reference, rtol=1e-3, atol=scale):
        return module, 0
    return model, len(pairs)


def _conv_bn_pairs(module: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(convolution name, BatchNorm name) for each BatchNorm whose input is a convolution's output, from one eval
    pass of ``module`` (put back in its mode after), and that pass's output."""
    names = {m: n for n, m in module.named_modules()}
    produced: dict[int, str] = {}  # id of a convolution's output -> its module name
    pairs: list[tuple[str, str]] = []
    calls: Counter = Counter()
    keep: list[torch.Tensor] = []  # outputs stay alive during the pass, so no id is reused

    def on_conv(m, _, out):
        keep.append(out)
        produced[id(out)] = names[m]
        calls[names[m]] += 1

    def on_bn(m, inputs, _):
        calls[names[m]] += 1
        conv = produced.pop(id(inputs[0]), None)
        if conv is not None and _foldable(module.get_submodule(conv), m):
            pairs.append((conv, names[m]))

    hooks = [m.register_forward_hook(on_conv if isinstance(m, nn.Conv2d) else on_bn)
             for m in module.modules() if isinstance(m, (nn.Conv2d, _BatchNorm))]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.autocast(example.device.type, enabled=False):
            reference = module(example.float())
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    # A convolution or BatchNorm that runs more than once (shared weights) belongs to no single pair.
    pairs = [(conv, bn) for conv, bn in pairs if calls[conv] == 1 and calls[bn] == 1
             and not parametrize.is_parametrized(module.get_submodule(conv))]
    return pairs, reference


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.out_channels == bn.num_features and bn.running_var is not None
            and (type(bn) is nn.BatchNorm2d or (hasattr(bn, "act") and hasattr(bn, "drop"))))


@torch.no_grad()
def _fold(model: nn.Module, conv_name: str, bn_name: str) -> None:
    """``conv`` and ``bn`` as one convolution (torch's :func:`~torch.nn.utils.fusion.fuse_conv_bn_eval`); the
    BatchNorm's place keeps what comes after its normalisation (timm's activation and dropout), else nothing."""
    conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
    fused = fuse_conv_bn_eval(conv, bn)
    for p in fused.parameters():
        p.requires_grad_(False)
    replacement = nn.Identity() if type(bn) is nn.BatchNorm2d else nn.Sequential(bn.drop, bn.act)
    for name, module in ((conv_name, fused), (bn_name, replacement)):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module)


class OnnxForward:
    """A module's eval forward run by ONNX Runtime on the CPU, in fp32: torch tensors in (any layout), out.

    Exported with torch's dynamo exporter (:func:`headstart.core.onnx.export_onnx`; about 11 s for
    EfficientNet-Lite0 on a shared 2-core machine, against 4 s for the deprecated TorchScript exporter it replaced),
    the batch size free and the image size fixed (VGG's adaptive pooling exports only for a known size): a pass
    has one size, and another size gets its own export. The session uses as many threads as PyTorch and does not
    spin between calls, so the decoding between batches gets the cores.
    """

    CHUNK = 16  # images per session call: ~10% more img/s than 64 at 64 and 224 px (benchmarks/backbone_speed.py)

    def __init__(self, module: nn.Module, example: torch.Tensor, threads: int | None = None):
        self.model = module  # not copied (a ResNet-50 copy is 0.5 GB): exported as it is when a new size comes
        self.threads = threads or torch.get_num_threads()
        self.sessions: dict[tuple[int, ...], object] = {}
        self._session(example[:1].detach().float().contiguous().cpu())

    def _session(self, example: torch.Tensor):
        size = tuple(example.shape[1:])
        if size not in self.sessions:
            with warnings.catch_warnings(), _silenced():
                warnings.simplefilter("ignore")  # the exporter's notices; a failure is said in one line by the caller
                graph = export_onnx(self.model, example[:1])
            self.sessions[size] = make_session(graph, self.threads, spin=False)
        return self.sessions[size]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().cpu()
        session, x = self._session(x), x.numpy()
        return torch.from_numpy(np.concatenate([session.run(None, {"x": x[i:i + self.CHUNK]})[0]
                                                for i in range(0, len(x), self.CHUNK)]))


@contextlib.contextmanager
def _silenced():
    """Standard output and error, at the file-descriptor level, go nowhere: the exporter prints its whole graph
    when an operator cannot be exported, and the caller says in one line what happened instead."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None where Python started without them (pythonw, fd 1 closed)
            stream.flush()
    saved: list[int] = []
    try:
        for fd in (1, 2):
            saved.append(os.dup(fd))
    except OSError:  # no standard streams to silence (a daemon with them closed); the one dup made is closed
        for fd in saved:
            os.close(fd)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for fd, copy_of in zip((1, 2), saved):
            os.dup2(copy_of, fd)
            os.close(copy_of)


def choose_engine(runtime: Runtime, images: int, height: int, width: int, engine: str | None = None) -> str:
    """The engine for an eval pass over ``images`` images of ``height`` x ``width``: ``torch`` or ``onnxruntime``.

    ``auto`` takes ONNX Runtime for CPU passes in fp32 of at least :data:`ORT_MIN_PIXELS` image pixels when it is
    installed; GPUs and bf16 stay with PyTorch (ONNX Runtime's CPU kernels are fp32).
    """
    engine = engine_setting(engine)
    if engine == "onnxruntime":
        if runtime.device.type != "cpu":
            raise UsageError("HEADSTART_ENGINE=onnxruntime runs on the CPU only; unset it to use the GPU.")
        if not has_onnxruntime():
            raise UsageError("HEADSTART_ENGINE=onnxruntime needs onnxruntime and onnx: pip install onnxruntime onnx")
        return engine
    if engine == "torch" or runtime.device.type != "cpu" or runtime.amp_dtype is not None:
        return "torch"
    return "onnxruntime" if images * height * width >= ORT_MIN_PIXELS and has_onnxruntime() else "torch"


def eval_forward(module: nn.Module, runtime: Runtime, example: torch.Tensor, engine: str,
                 known_as: nn.Module | None = None) -> Callable:
    """``module``'s eval forward by ``engine`` (:func:`choose_engine`), as a callable on input batches.

    ONNX Runtime where asked; if the export fails under ``auto`` (an operator it lacks), the folded PyTorch copy,
    with a line on stderr that says so: the numbers agree to float rounding either way. The failure is remembered
    for ``known_as`` (default ``module``; a wrapper made anew for each pass names a module that lasts) and that
    input size, so it is tried and said once.
    """
    size, forced = tuple(example.shape[1:]), engine_setting() == "onnxruntime"
    known_as = module if known_as is None else known_as
    if engine == "onnxruntime" and (forced or size not in _EXPORT_FAILED.get(known_as, ())):
        try:
            return OnnxForward(module, example)
        except Exception as exc:
            if forced:
                raise
            _EXPORT_FAILED.setdefault(known_as, set()).add(size)  # said once; the next passes go straight to PyTorch
            print(f"note: ONNX Runtime could not run this network ({type(exc).__name__}: "
                  f"{str(exc).split('Torch IR graph')[0].strip()[:200]}); "
                  "computing with PyTorch instead (same results, slower).", file=sys.stderr)
    folded, _ = fold_batchnorm(module, runtime.to_input(example[:1].float()))
    return runtime.prepare(folded)


def model_forward(model: nn.Module, runtime: Runtime, example: torch.Tensor, images: int,
                  engine: str | None = None) -> Callable:
    """The eval forward of a whole :class:`~headstart.zoo.model.TransferModel` (or its DDP wrapper) for a pass over
    ``images`` images like ``example``: the backbone by :func:`eval_forward`, then the head (dropout is the
    identity in eval). Any other module is returned as it is."""
    net = getattr(model, "module", model)
    if not isinstance(net, TransferModel):
        return model
    net.eval()
    backbone, head = fast_forward(net.backbone, runtime, example, images, engine), net.head

    def forward(x: torch.Tensor) -> torch.Tensor:
        # The head in its own dtype, outside autocast, as on cached features (features.probe.cached_logits): a probe
        # fitted in fp32 with large weights moves scores by ~1e-4 when its matmul runs in bf16.
        feats = backbone(x).to(head.weight.device, head.weight.dtype)
        with torch.autocast(feats.device.type, enabled=False):
            return head(feats)

    return forward


def in_chunks(forward: Callable, x: torch.Tensor, chunk: int = CPU_CHUNK) -> torch.Tensor:
    """``forward`` on ``x`` ``chunk`` images at a time (:data:`CPU_CHUNK`): the same numbers, to float rounding, in
    less time on a CPU."""
    if len(x) <= chunk:
        return forward(x)
    return torch.cat([forward(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def fast_forward(module: nn.Module, runtime: Runtime, example: torch.Tensor, images: int,
                 engine: str | None = None) -> Callable:
    """:func:`eval_forward` by the engine :func:`choose_engine` picks for ``images`` images like ``example``."""
    chosen = choose_engine(runtime, images, example.shape[-2], example.shape[-1], engine)
    return eval_forward(module, runtime, example, chosen)
