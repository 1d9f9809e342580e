"""The training forward pass, made fast where nothing learns: the frozen prefix runs as an eval network, and each
BatchNorm in eval mode is computed inside its convolution.

Fine-tuning freezes the early layer groups and keeps every BatchNorm in eval mode (``bn_policy="frozen"``), yet
eager PyTorch still runs those layers op by op and every BatchNorm as a separate pass, forward and backward. Two
changes compute the same numbers (to float rounding) for less:

- The frozen prefix (the modules that run first, one after the other, with no trainable parameter, no BatchNorm
  in train mode and nothing random) gets no gradient, so it is an eval network: the fast eval forward of
  :mod:`headstart.engine.forward` runs it (ONNX Runtime on a CPU in fp32, else a copy with BatchNorm folded).
- After it, a convolution followed by a BatchNorm in eval mode is one convolution with weight ``w * s`` and bias
  ``beta + (b - mean) * s`` (``s = gamma / sqrt(var + eps)``), built from the live parameters at every call, so
  autograd trains ``w``, ``gamma`` and ``beta`` as before, without BatchNorm's pass over the activations.

Measured on a 2-core AMD EPYC without native bf16, EfficientNet-Lite0, 224 px, batch 32, fp32 channels-last,
``fine-tune`` (the later half trains): training steps 19.9 img/s eager, 26-30 with both (1.41x, medians,
``benchmarks/backbone_speed.py``); the prefix by ONNX Runtime alone gave 1.2-1.4x, the fusion alone 1.27x. Whole
epochs of ``headstart train --strategy fine-tune`` (400 images, decoding included) gained only 1.10x (20.0 s against
22.0 s); preparing takes about 0.8 s per epoch.

Nothing is replaced: the changes are ``forward`` attributes set on module instances and removed when the context
exits, so parameters, state dicts and checkpoints are the eager ones. Which BatchNorm reads which convolution and
where the prefix ends are seen in one pass over the first batch (hooks, and every op's inputs), and a training
step on two of its images is compared with eager PyTorch, outputs and gradients; whatever does not agree is left
to eager PyTorch. ``HEADSTART_ENGINE=torch`` keeps ONNX Runtime out, as for evaluation;
``HEADSTART_TRAIN_FORWARD=eager`` turns all of this off (to compare, or to rule it out of a bug report).
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from headstart.core.choices import train_forward_setting
from headstart.core.runtime import Runtime
from headstart.engine.forward import _conv_bn_pairs, choose_engine, eval_forward

# Images x height x width per epoch from which preparing (seeing the model, checking a step against eager: about
# 0.5 s for Lite0) pays. Below it the epoch is short and stays eager: at 32 px, 128 images, preparing made an epoch
# 1.6x slower; at 64 px, 256 images it was a wash (in-process A/B, /tmp script).
FAST_MIN_PIXELS = 3_000_000


@contextlib.contextmanager
def fast_training_forward(model: nn.Module, runtime: Runtime, images: int) -> Iterator[Callable]:
    """Yields ``forward(images) -> logits`` for one training epoch of ``model`` (a TransferModel or its DDP
    wrapper): the model's own forward, made fast on the first batch (see the module docstring). The model is back
    to what it was when the context exits.

    Args:
        images: how many images the epoch passes; with the image size it decides whether exporting the frozen
            prefix to ONNX Runtime pays (:func:`headstart.engine.forward.choose_engine`).
    """
    fast = _FastForward(model, runtime, images)
    try:
        yield fast
    finally:
        fast.remove()


@dataclass
class _Plan:
    """What one model's fast forward changes: the frozen prefix (modules in call order) with its eval forward, and
    the (convolution, BatchNorm) pairs computed as one convolution."""

    prefix: list[nn.Module] = field(default_factory=list)
    prefix_forward: Callable | None = None
    pairs: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)


class _FastForward:
    def __init__(self, model: nn.Module, runtime: Runtime, images: int):
        self.model, self.runtime, self.images = model, runtime, images
        self.net = getattr(model, "module", model)  # DDP keeps the model in .module
        self.touched: list[nn.Module] = []
        self.plan: _Plan | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan is None:
            self.plan = _Plan()
            if self.images * x.shape[-2] * x.shape[-1] >= FAST_MIN_PIXELS and train_forward_setting() == "fast":
                try:
                    self.plan = self._prepare(x[:2])
                except Exception:  # noqa: BLE001 (a model the fast path cannot follow trains as it is, only slower)
                    self.remove()
        return self.model(x)

    def remove(self) -> None:
        for m in self.touched:
            m.__dict__.pop("forward", None)
        self.touched.clear()

    # Preparing -------------------------------------------------------------------------------------------------

    def _prepare(self, example: torch.Tensor) -> _Plan:
        net = self.net
        if not any(p.requires_grad for p in net.parameters()):
            return _Plan()
        frozen = any(not p.requires_grad for p in net.parameters())
        if not frozen and not any(isinstance(m, _BatchNorm) and not m.training for m in net.modules()):
            return _Plan()  # training from scratch: every layer learns, every BatchNorm too; nothing to do
        modes = {m: m.training for m in net.modules()}
        example = example.float()
        try:
            prefix = _frozen_prefix(net, example)
            pairs = _trainable_pairs(net, example, prefix)
            prefix_forward = self._prefix_forward(prefix, example) if prefix else None
        finally:
            for m, mode in modes.items():
                m.training = mode
        reference = _training_step(net, example)
        full = _Plan(prefix, prefix_forward, pairs)
        # Both, else each alone: a pairing or prefix that changes the numbers is left to eager PyTorch.
        for plan in (full, _Plan(pairs=pairs), _Plan(prefix, prefix_forward)):
            if not plan.pairs and not plan.prefix:
                continue
            self._install(plan)
            if _agrees(_training_step(net, example), reference, example.device):
                return plan
            self.remove()
        return _Plan()

    def _prefix_forward(self, prefix: list[nn.Module], example: torch.Tensor) -> Callable:
        size = example.shape[-2:]
        engine = choose_engine(self.runtime, self.images, size[0], size[1])
        # An export that failed is remembered for the prefix's last module (the chain is new every epoch).
        return eval_forward(_Chain(prefix), self.runtime, example, engine, known_as=prefix[-1])

    def _install(self, plan: _Plan) -> None:
        if plan.prefix:
            first, rest = plan.prefix[0], plan.prefix[1:]
            first.forward = _prefix_override(_Chain(plan.prefix), plan.prefix_forward, self.runtime)
            for m in rest:
                m.forward = _passthrough  # the first module computed the whole prefix
            self.touched += plan.prefix
        for conv, bn in plan.pairs:
            conv.forward, bn.forward = _conv_with_batchnorm(conv, bn), _batchnorm_done_by_conv(bn)
            self.touched += [conv, bn]


class _Chain(nn.Module):
    """Modules run one after the other, by their class's forward where an override of ours is installed on them;
    ``train()`` leaves their modes alone (an export switches modes, and the real modules' BatchNorm policy
    must survive it)."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.chain = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.chain:
            x = type(m).forward(m, x) if "forward" in m.__dict__ else m(x)
        return x

    def train(self, mode: bool = True) -> _Chain:
        self.training = mode
        return self


def _passthrough(x: torch.Tensor) -> torch.Tensor:
    return x


def _prefix_override(chain: _Chain, fast: Callable, runtime: Runtime) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # someone wants gradients of the input: the eval network gives none
            return chain(x)
        out = fast(x).to(x.device)
        return out.contiguous(memory_format=torch.channels_last) if out.ndim == 4 and runtime.channels_last else out

    return forward


def _conv_with_batchnorm(conv: nn.Module, bn: _BatchNorm) -> Callable:
    """``conv``'s forward with ``bn`` (in eval mode) folded into its weight and bias at every call, through the
    class's own forward (so padding, groups and timm's "same" padding are its own); plain when ``bn`` trains."""
    proxy, conv_forward = copy.copy(conv), type(conv).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if bn.training:
            return conv_forward(conv, x)
        scale = (bn.weight if bn.weight is not None else 1.0) * torch.rsqrt(bn.running_var + bn.eps)
        bias = (bn.bias if bn.bias is not None else 0.0) - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        proxy.__dict__["_parameters"] = {"weight": conv.weight * scale.reshape(-1, 1, 1, 1), "bias": bias}
        return conv_forward(proxy, x)

    return forward


def _batchnorm_done_by_conv(bn: _BatchNorm) -> Callable:
    """What ``bn`` still does when its convolution normalised: nothing, or timm's BatchNormAct2d's dropout and
    activation (in its order)."""
    bn_forward = type(bn).forward
    after = (lambda x: bn.act(bn.drop(x))) if hasattr(bn, "act") else _passthrough

    def forward(x: torch.Tensor) -> torch.Tensor:
        return bn_forward(bn, x) if bn.training else after(x)

    return forward


# Seeing the model -----------------------------------------------------------------------------------------------

def _maximal_frozen(net: nn.Module) -> list[nn.Module]:
    """The largest submodules that compute as an eval network: no trainable parameter, no BatchNorm in train
    mode, no hook or override of anyone's on them."""
    def frozen(m: nn.Module) -> bool:
        return all(not p.requires_grad for p in m.parameters()) and all(
            not (isinstance(s, _BatchNorm) and s.training) and not s._forward_hooks and not s._forward_pre_hooks
            and "forward" not in s.__dict__ for s in m.modules())

    if frozen(net):
        return [net]
    return [f for child in net.children() for f in _maximal_frozen(child)]


class _Reads(TorchFunctionMode):
    """Records, for each tensor, the moments (op counter) at which an op read it."""

    def __init__(self, clock: list[int]):
        super().__init__()
        self.clock, self.reads = clock, defaultdict(list)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.clock[0] += 1
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if isinstance(t, torch.Tensor):
                    self.reads[id(t)].append(self.clock[0])
        return func(*args, **kwargs)


def _frozen_prefix(net: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The maximal frozen modules that run first, each on the previous one's output (the first on the input),
    nothing random among them, and no output but the last read by anything other than the next of them (a skip
    connection from inside would see the prefix's end instead): seen in one train-mode pass."""
    candidates = _maximal_frozen(net)
    if not candidates or candidates == [net]:
        return []
    clock, calls, keep = [0], [], []
    count: Counter = Counter()
    devices = _cuda_devices(example)

    def rng_state():
        return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in devices]

    def before(m, inputs):
        count[m] += 1
        clock[0] += 1
        x = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) else None
        calls.append({"module": m, "start": clock[0], "input": id(x) if x is not None else None, "rng": rng_state()})

    def after(m, _, out):
        clock[0] += 1
        call = next(c for c in reversed(calls) if c["module"] is m)
        call["end"], call["output"] = clock[0], id(out) if isinstance(out, torch.Tensor) else None
        call["random"] = any(not torch.equal(a, b) for a, b in zip(call["rng"], rng_state()))
        keep.append(out)  # alive until the end of the pass, so no other tensor takes its id

    hooks = [h for m in candidates for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with _unchanged_state(net, devices), torch.no_grad(), _Reads(clock) as reads:
            net(example)
    finally:
        for h in hooks:
            h.remove()
    prefix, current = [], id(example)
    for call in calls:
        if call["input"] != current or count[call["module"]] != 1 or call["random"] or call["output"] is None:
            break
        prefix.append(call)
        current = call["output"]
    for i, call in enumerate(prefix[:-1]):
        readers = [(c["start"], c["end"]) for c in prefix[i + 1:] if c["input"] == call["output"]]
        if any(t > call["end"] and not any(s <= t <= e for s, e in readers) for t in reads.reads[call["output"]]):
            prefix = prefix[:i + 1]  # read elsewhere too: the prefix may end here, not pass through
            break
    modules = [c["module"] for c in prefix]
    return modules if any(True for m in modules for _ in m.parameters()) else []


def _trainable_pairs(net: nn.Module, example: torch.Tensor, prefix: list[nn.Module]) -> list[tuple]:
    """(convolution, BatchNorm in eval mode) pairs outside the prefix, as :func:`fold_batchnorm` sees them."""
    inside = {s for m in prefix for s in m.modules()}
    pairs = []
    for conv_name, bn_name in _conv_bn_pairs(net, example)[0]:
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        if (conv in inside or bn in inside or bn.training or conv._forward_hooks or conv._forward_pre_hooks
                or "forward" in conv.__dict__ or "forward" in bn.__dict__):
            continue
        pairs.append((conv, bn))
    return pairs


# Checking ------------------------------------------------------------------------------------------------------

def _cuda_devices(example: torch.Tensor) -> list[int]:
    """The CUDA device whose random generator a pass over ``example`` may draw from (none on the CPU)."""
    return [example.device.index or 0] if example.device.type == "cuda" else []


@contextlib.contextmanager
def _unchanged_state(net: nn.Module, devices: list[int]):
    """The random number generators and every buffer (BatchNorm statistics in train mode move) as they were."""
    saved = [b.detach().clone() for b in net.buffers()]
    try:
        with torch.random.fork_rng(devices=devices), torch.autocast(
                "cuda" if devices else "cpu", enabled=False):
            yield
    finally:
        with torch.no_grad():
            for b, s in zip(net.buffers(), saved):
                b.copy_(s)


def _training_step(net: nn.Module, example: torch.Tensor) -> list[torch.Tensor]:
    """Output and gradients of the trainable parameters for a fixed random loss, dropout masks seeded."""
    params = [p for p in net.parameters() if p.requires_grad]
    with _unchanged_state(net, _cuda_devices(example)):
        torch.manual_seed(0)
        out = net(example)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
        grads = torch.autograd.grad((out.float() * weights).sum(), params, allow_unused=True)
    return [out.detach()] + [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def _agrees(fast: list[torch.Tensor], reference: list[torch.Tensor], device: torch.device) -> bool:
    """Equal to float rounding: a wrong pairing or prefix is off by the size of the values themselves. Gradients
    get more room: rounding may flip a ReLU whose input is about 0, which moves a gradient by that one element."""
    tolerance = 1e-4 if device.type == "cpu" else 1e-2  # TF32 convolutions on GPUs round more
    return all(a.shape == b.shape and (a.float() - b.float()).norm() <= room * b.float().norm() + 1e-12
               for room, a, b in zip([tolerance] + [max(tolerance, 0.05)] * len(reference), fast, reference))
