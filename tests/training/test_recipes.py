"""Fine-tuning recipes: layer-wise rates, gradual unfreezing, LP-FT, L2-SP, AdaBN, lr-find, mixup, balance, TTA and
auto; then each through the command line on small folders the tests write."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from headstart.cli import main
from headstart.core.runtime import make_runtime
from headstart.data.balance import BalancedSampler, class_weights, skew
from headstart.predict.run import predict_probs
from headstart.training import loop
from headstart.training.adapt import adapt_batchnorm
from headstart.training.auto import choose_strategy
from headstart.training.losses import L2SP, make_criterion, make_mixer
from headstart.training.lr_finder import _suggestions, lr_find
from headstart.training.probe import ProbeOptions
from headstart.training.strategy import Phase, make_strategy, resolve_train_from
from headstart.zoo import create_backbone
from headstart.zoo.model import build_model
from tests.conftest import make_class_folder

RUNTIME = make_runtime("cpu", "fp32")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("resnet20", 3, pretrained=False)  # groups: stem, layer1, layer2, layer3, head


def tensor_loaders(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 3
    x += y[:, None, None, None].float()  # learnable: the class shifts the brightness
    ds = TensorDataset(x, y)
    return {"train": DataLoader(ds, batch_size=8), "val": DataLoader(ds, batch_size=12),
            "train_eval": DataLoader(ds, batch_size=12)}


# Layer-wise learning rates ----------------------------------------------------------------------------------------

def test_lr_decay_gives_group_i_lr_times_decay_to_the_g_minus_i(model):
    phase = Phase("full", epochs=1, lr=1e-2, train_from=0, lr_decay=0.5)
    model.set_trainable(0)
    groups = loop.param_groups(model, phase, weight_decay=0.05)
    head = len(model.group_names) - 1
    for g in groups:
        i = model.group_names.index(g["name"])
        assert g["lr"] == 1e-2 * 0.5 ** (head - i)  # exact: the same float expression
    assert {g["name"] for g in groups} == set(model.group_names)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    assert all(g["weight_decay"] == (0.0 if g["params"][0].ndim <= 1 else 0.05) for g in groups)


def test_without_decay_the_backbone_gets_the_scaled_rate_and_frozen_groups_none(model):
    model.set_trainable(resolve_train_from(0.5, len(model.group_names)))  # layer2, layer3, head
    groups = loop.param_groups(model, Phase("ft", epochs=1, lr=1e-3, backbone_lr_scale=0.1), 0.05)
    assert {g["name"]: g["lr"] for g in groups} == {"layer2": pytest.approx(1e-4), "layer3": pytest.approx(1e-4),
                                                   "head": 1e-3}


# Strategies as phases ---------------------------------------------------------------------------------------------

def test_gradual_unfreezes_one_more_group_per_phase(model):
    n = len(model.group_names)
    strategy = make_strategy("gradual", epochs=10, groups=n, unfreeze_every=2)
    firsts = [resolve_train_from(p.train_from, n) for p in strategy.phases]
    assert firsts == [4, 3, 2, 1, 0]  # head; layer3; layer2; layer1; everything
    assert strategy.phases[0].fit == "features"
    assert [p.epochs for p in strategy.phases[1:]] == [2, 2, 2, 4]  # the last phase takes the remaining epochs
    short = make_strategy("gradual", epochs=2, groups=n)
    assert [resolve_train_from(p.train_from, n) for p in short.phases] == [4, 3, 2]


def test_gradual_fit_trains_the_expected_groups(model):
    frozen = []
    strategy = make_strategy("gradual", epochs=4, groups=len(model.group_names))
    loop.fit(model, strategy, tensor_loaders(), RUNTIME, patience=0, probe=ProbeOptions(),
             on_epoch=lambda record, state, ckpt: frozen.append((record["phase"], model.frozen_groups())))
    assert frozen == [("head", [0, 1, 2, 3]), ("unfreeze-1", [0, 1, 2]), ("unfreeze-2", [0, 1]),
                      ("unfreeze-3", [0]), ("unfreeze-4", [])]


def test_lp_ft_starts_its_fine_tuning_from_the_probe_head(model, monkeypatch):
    strategy = make_strategy("lp-ft", epochs=1, lr=1e-3)
    assert [p.fit for p in strategy.phases] == ["features", "sgd"]
    ft = strategy.phases[1]
    assert ft.train_from == 0 and ft.lr == pytest.approx(1e-4) and ft.lr * ft.backbone_lr_scale == pytest.approx(1e-5)
    probe_head, start_head = {}, {}
    real = loop.train_one_epoch

    def spy(m, *args, **kwargs):
        start_head.setdefault("w", model.head.weight.detach().clone())
        return real(m, *args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", spy)

    def on_epoch(record, state, ckpt):
        if record["phase"] == "probe":
            probe_head["w"] = ckpt["model"]["head.weight"].clone()

    loop.fit(model, strategy, tensor_loaders(), RUNTIME, on_epoch=on_epoch, probe=ProbeOptions())
    assert probe_head["w"].abs().sum() > 0
    torch.testing.assert_close(start_head["w"], probe_head["w"], rtol=0, atol=0)


def test_strategy_options_fail_with_an_example():
    with pytest.raises(ValueError, match="e.g. 0.75"):
        make_strategy("full", lr_decay=1.5)
    with pytest.raises(ValueError, match="scratch has none"):
        make_strategy("scratch", l2sp=0.01)
    with pytest.raises(ValueError, match="--bn must be one of"):
        make_strategy("full", bn="sometimes")
    adabn = make_strategy("fine-tune", bn="adabn", l2sp=0.01, lr_decay=0.8)
    assert [p.bn for p in adabn.phases] == ["adabn", "frozen"]  # adapted once, then kept
    assert [(p.l2sp, p.lr_decay) for p in adabn.phases] == [(0.0, None), (0.01, 0.8)]


# L2-SP --------------------------------------------------------------------------------------------------------------

def test_l2sp_is_zero_at_the_pretrained_weights_and_pulls_back_to_them(model):
    w0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    penalty = L2SP(model, w0, alpha=0.1)
    assert penalty().item() == 0.0
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    value = penalty()
    value.backward()
    expected = 0.05 * sum(((p - w0[n]) ** 2).sum() for n, p in model.backbone.named_parameters())
    torch.testing.assert_close(value, expected)
    for n, p in model.backbone.named_parameters():
        torch.testing.assert_close(p.grad, 0.1 * (p.detach() - w0[n]))  # -grad points from w back to w0
    assert model.head.weight.grad is None
    model.set_trainable(0)
    groups = loop.param_groups(model, Phase("full", epochs=1, lr=1e-3, train_from=0, l2sp=0.1), 0.05)
    decays = {(g["name"], g["params"][0].ndim > 1): g["weight_decay"] for g in groups}
    assert decays[("head", True)] == 0.05  # the head keeps plain weight decay...
    assert all(d == 0.0 for (name, _), d in decays.items() if name != "head")  # ...the backbone has L2-SP instead


# AdaBN ------------------------------------------------------------------------------------------------------------

def test_adabn_sets_running_stats_to_the_target_statistics_and_nothing_else(model):
    model.eval()
    target = torch.randn(64, 3, 32, 32) * 2 + 3
    loader = DataLoader(TensorDataset(target, torch.zeros(64, dtype=torch.long)), batch_size=16)
    stem_bn = model.backbone.bn1 if hasattr(model.backbone, "bn1") else next(
        m for m in model.modules() if isinstance(m, _BatchNorm))
    conv_out = []
    # The first BatchNorm's input is the stem convolution's output: its target statistics are computable here.
    hook = stem_bn.register_forward_pre_hook(lambda m, args: conv_out.append(args[0].detach()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = adapt_batchnorm(model, [loader], RUNTIME)
    hook.remove()
    assert seen == 64 and not model.training
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    bn_buffers = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, _BatchNorm)
                  for b in ("running_mean", "running_var")}
    assert changed and changed <= bn_buffers  # only BatchNorm statistics moved
    assert len(changed) == len(bn_buffers)  # every layer's
    stem_in = torch.cat(conv_out)  # all 64 images: statistics pooled over the batches
    torch.testing.assert_close(stem_bn.running_mean, stem_in.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stem_bn.running_var, stem_in.var((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)
    assert stem_bn.momentum == 0.1


def _one_batch(x):
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=len(x))


def test_aligned_adabn_maps_the_target_onto_the_training_images_even_with_foreign_statistics(model):
    """A model whose statistics are not its training images' (frozen ImageNet statistics, here another random
    domain's). The target is the training images with 2.5 times the contrast, which the stem convolution (linear:
    no bias, zero padding) passes on as 2.5 times every stem channel: aligned AdaBN undoes that exactly,
    so the adapted model gives on the target the logits the original gave on the training images. Classic AdaBN
    does not: it normalises for the target alone."""
    g = torch.Generator().manual_seed(1)
    adapt_batchnorm(model, [_one_batch(torch.randn(32, 3, 32, 32, generator=g) * 0.5 - 1)], RUNTIME)  # "ImageNet"
    source = torch.randn(48, 3, 32, 32, generator=g)
    target = source * 2.5
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(source)

    adapt_batchnorm(model, [_one_batch(source)], RUNTIME, source=[_one_batch(source)])  # its own domain
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, original[k], rtol=1e-4, atol=1e-4)  # nothing to adapt

    adapt_batchnorm(model, [_one_batch(target)], RUNTIME, source=[_one_batch(source)])
    with torch.no_grad():
        aligned = model(target)
    torch.testing.assert_close(aligned, expected, rtol=1e-3, atol=1e-3)

    model.load_state_dict(original)
    adapt_batchnorm(model, [_one_batch(target)], RUNTIME)
    with torch.no_grad():
        classic = model(target)
    assert (classic - expected).abs().max() > 100 * (aligned - expected).abs().max()


def test_bn_adabn_phase_takes_its_statistics_from_the_training_images_alone(model):
    """Validation images chose and score; nothing fitted may see them. A validation set far from the training
    images (mean 20, sd 5) must leave every running mean and variance as the training images alone give them."""
    loaders = tensor_loaders()
    g = torch.Generator().manual_seed(7)
    far = DataLoader(TensorDataset(torch.randn(24, 3, 32, 32, generator=g) * 5 + 20, torch.arange(24) % 3),
                     batch_size=12)
    loaders["val"] = loaders["val_all"] = far
    train_only, with_val = copy.deepcopy(model), copy.deepcopy(model)
    adapt_batchnorm(train_only, [loaders["train_eval"]], RUNTIME)
    adapt_batchnorm(with_val, [loaders["train_eval"], far], RUNTIME)

    loop.fit(model, make_strategy("linear-probe", bn="adabn"), loaders, RUNTIME, probe=ProbeOptions())
    stats = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    expected = {n: m for n, m in train_only.named_modules() if isinstance(m, _BatchNorm)}
    mixed = {n: m for n, m in with_val.named_modules() if isinstance(m, _BatchNorm)}
    assert stats.keys() == expected.keys() and stats
    for name, bn in stats.items():
        torch.testing.assert_close(bn.running_mean, expected[name].running_mean)
        torch.testing.assert_close(bn.running_var, expected[name].running_var)
    stem = next(iter(stats))  # the check can fail: with the validation images the stem's statistics move far
    assert (mixed[stem].running_mean - expected[stem].running_mean).abs().max() > 1.0


# lr-find, losses, balance, TTA, auto ------------------------------------------------------------------------------

def test_lr_find_minimum_is_not_fooled_by_one_lucky_early_batch():
    """A fitted head: the loss is flat and noisy at small rates, dips near 1e-3, then diverges. One lucky batch at
    step 6 must not become the minimum (the exponential average's early points average only a few batches)."""
    rng = np.random.default_rng(2)
    lrs = list(np.geomspace(1e-7, 10, 100))
    losses = [0.7 + 0.15 * rng.standard_normal() for _ in lrs]
    losses[6] = 0.05
    for i, lr in enumerate(lrs):
        losses[i] -= 0.25 * np.exp(-np.log10(lr / 1e-3) ** 2 / 0.5)
        if lr > 1e-1:
            losses[i] += 5 * np.log10(lr / 1e-1)
    avg, smoothed = 0.0, []
    for step, v in enumerate(losses):
        avg = 0.98 * avg + 0.02 * v
        smoothed.append(avg / (1 - 0.98 ** (step + 1)))
    assert int(np.argmin(smoothed[5:])) + 5 < 20  # the plotted curve's minimum is the lucky batch...
    min_lr, _ = _suggestions(lrs, losses, smoothed)
    assert 2e-4 < min_lr < 5e-3  # ...the suggestion comes from the real dip


def test_lr_find_suggests_a_finite_rate_and_restores_the_model(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_trainable(-1)
    flags = [p.requires_grad for p in model.parameters()]
    result = lr_find(model, tensor_loaders()["train"], RUNTIME, Phase("ft", 1, 1.0, train_from=0.5), steps=40,
                     end_lr=100.0)
    assert np.isfinite(result.suggested_lr) and 1e-7 <= result.suggested_lr <= 10
    assert result.suggested_lr == pytest.approx(result.min_loss_lr / 10)
    assert len(result.lrs) == len(result.smoothed) >= 2 and result.lrs == sorted(result.lrs)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert [p.requires_grad for p in model.parameters()] == flags


def test_mixup_and_cutmix_train_with_soft_targets(model):
    mix = make_mixer(3, mixup=0.4, cutmix=1.0)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, soft = mix(x, y)
    assert soft.shape == (6, 3) and torch.allclose(soft.sum(1), torch.ones(6))
    criterion = make_criterion(label_smoothing=0.1, class_weights=torch.tensor([1.0, 2.0, 0.5]))
    logits = torch.randn(6, 3)
    torch.testing.assert_close(criterion(logits, torch.eye(3)[y]), criterion(logits, y))  # one-hot == indices
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    out = loop.train_one_epoch(model, tensor_loaders()["train"], optimizer, scheduler, RUNTIME, criterion=criterion,
                               mix=mix)
    assert np.isfinite(out["train_loss"]) and 0 <= out["train_acc"] <= 1
    assert make_mixer(3) is None


def test_balance_weights_and_sampler():
    labels = [0] * 30 + [1] * 10 + [2] * 5
    torch.testing.assert_close(class_weights(labels, 4), torch.tensor([45 / 120, 45 / 40, 45 / 20, 0.0]))
    assert skew(labels, 3) == 6.0
    sampler = BalancedSampler(labels, seed=1)
    sampler.set_epoch(3)
    drawn = np.bincount([labels[i] for i in sampler], minlength=3)
    assert len(list(sampler)) == 45 and drawn.min() >= 5  # roughly 15 each, not 30/10/5
    again = BalancedSampler(labels, seed=1)
    again.set_epoch(3)
    assert list(again) == list(sampler)
    shards = [list(BalancedSampler(labels, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 22


def test_tta_returns_probabilities_of_the_right_shape(model):
    model.eval()
    images = torch.randn(5, 3, 32, 32)
    for tta in (False, True):
        probs = predict_probs(model, images, RUNTIME, tta=tta)
        assert probs.shape == (5, 3) and torch.allclose(probs.sum(1), torch.ones(5))
    with torch.no_grad():
        expected = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(predict_probs(model, images, RUNTIME, tta=True), expected)


@pytest.mark.parametrize("images, classes, strategy", [(50, 10, "linear-probe"), (190, 10, "linear-probe"),
                                                       (1000, 10, "full"), (19_999, 100, "full"),
                                                       (50_000, 10, "full")])
def test_auto_choice(images, classes, strategy):
    counts = [images // classes + (i < images % classes) for i in range(classes)]
    choice = choose_strategy(counts, batch_size=32)
    assert choice.strategy == strategy and f"{images:,} labelled images" in choice.reason
    assert (choice.lr_decay is not None) == (images >= 20_000)
    if images == 1000:
        assert choice.epochs == 10  # ceil(300 steps / 32 steps per epoch)
    if strategy != "linear-probe":
        assert choice.lr == 1e-3 and "learning rate 0.001" in choice.reason
        assert choose_strategy(counts, batch_size=128).lr == 2e-3  # square-root scaling


def test_auto_learning_rate_reaches_the_strategy(tmp_path, weights):
    data = make_class_folder(tmp_path / "d", per_class=24)  # 20+ per class after the validation split
    assert main(["train", str(data), "--out", str(tmp_path / "r"), *FAST, "--weights", weights, "--epochs", "1",
                 "--val-fraction", "0.1"]) == 0
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["strategy_resolved"] == "full" and config["strategy_phases"][0]["train_from"] == 0
    assert config["strategy_choice"]["lr"] == pytest.approx(1e-3 * (4 / 32) ** 0.5, rel=0.02)  # batch 4
    assert config["strategy_phases"][0]["lr"] == config["strategy_choice"]["lr"]


# Through the command line -----------------------------------------------------------------------------------------

FAST = ["--model", "resnet20", "--workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)
    path = tmp_path_factory.mktemp("w") / "r20.pth"
    torch.save(backbone.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, weights):
    root = tmp_path_factory.mktemp("recipes")
    data = make_class_folder(root / "data", per_class=6)
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), *FAST, "--weights", weights, "--strategy", "fine-tune",
                 "--epochs", "1", "--label-smoothing", "0.1", "--mixup", "0.2", "--l2sp", "0.01"]) == 0
    return root, data, run


def test_summary_names_the_phase_whose_weights_were_kept(run_dir):
    root, data, run = run_dir
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    best = min(records, key=lambda r: r["val_loss"])
    assert summary["best_phase"] == best["phase"] and summary["best_epoch"] == best["global_epoch"]
    assert {r["phase"] for r in records} == {"head", "fine-tune"}


def test_auto_is_the_default_and_records_why(tmp_path, weights, capsys):
    data = make_class_folder(tmp_path / "d", per_class=6)
    assert main(["train", str(data), "--out", str(tmp_path / "r"), *FAST, "--weights", weights]) == 0
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["strategy"] == "auto" and config["strategy_resolved"] == "linear-probe"
    assert "the median class has fewer than 20" in config["strategy_choice"]["reason"]
    assert "auto: " in capsys.readouterr().err


def test_recipe_options_through_train(tmp_path, weights, capsys):
    data = make_class_folder(tmp_path / "d", per_class=10)
    for f in sorted((data / "red").iterdir())[3:]:
        f.unlink()  # 3 red against 10 green and 10 blue
    out = tmp_path / "g"
    assert main(["train", str(data), "--out", str(out), *FAST, "--weights", weights, "--strategy", "gradual",
                 "--epochs", "2", "--lr-decay", "0.7", "--bn", "adabn", "--cutmix", "1.0", "--balance", "sampler",
                 "--precision", "fp32"]) == 0
    assert "--balance weights" not in capsys.readouterr().err  # balanced by the sampler: no hint
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert [p["name"] for p in config["strategy_phases"]] == ["head", "unfreeze-1", "unfreeze-2"]
    assert config["strategy_phases"][1]["lr_decay"] == 0.7 and config["strategy_phases"][0]["bn"] == "adabn"
    assert main(["train", str(data), "--out", str(tmp_path / "w"), *FAST, "--weights", weights, "--strategy",
                 "linear-probe", "--balance", "weights"]) == 0
    assert main(["train", str(data), "--out", str(tmp_path / "n"), *FAST, "--weights", weights, "--strategy",
                 "linear-probe"]) == 0
    assert "--balance weights" in capsys.readouterr().err  # imbalanced (8 vs 2 train images): the hint


def test_adapt_writes_a_run_that_predict_and_evaluate_use(run_dir, tmp_path, capsys):
    root, data, run = run_dir
    target = make_class_folder(tmp_path / "target", per_class=8, seed=3)
    for f in target.rglob("*.png"):  # a shifted domain: darker images
        Image.eval(Image.open(f), lambda v: v // 2).save(f)
    adapted = tmp_path / "adapted"
    assert main(["adapt", str(run), str(target), "--out", str(adapted), "--batch-size", "8", "--workers", "0"]) == 0
    info = json.loads((adapted / "adapt.json").read_text())
    assert info["images"] == 24 and info["batchnorm_layers"] > 0
    assert info["method"] == "aligned" and "split.json" in info["source"]  # the run's own training images
    classic = tmp_path / "classic"
    assert main(["adapt", str(run), str(target), "--out", str(classic), "--method", "classic"]) == 0
    assert "--source" in capsys.readouterr().err  # frozen (pretrained) statistics, classic AdaBN: a warning
    a, b = load_file(str(run / "best.safetensors")), load_file(str(adapted / "best.safetensors"))
    differ = {k for k in a if not torch.equal(a[k], b[k])}
    assert differ and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in differ)
    capsys.readouterr()
    assert main(["evaluate", str(adapted), str(target), "--json", "--tta"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["tta"] and m["num_images"] == 24
    assert main(["predict", str(adapted), str(target / "red"), "--format", "json", "--tta"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 8 and all(0 <= p["score"] <= 1 for p in preds)
    assert main(["adapt", str(run), str(target), "--out", str(adapted)]) == 2  # no silent overwrite


def test_lr_find_command_on_a_run_and_on_data(run_dir, tmp_path, weights, capsys):
    root, data, run = run_dir
    before = (run / "best.safetensors").read_bytes()
    assert main(["lr-find", str(run), "--steps", "12", "--workers", "0", "--batch-size", "4"]) == 0
    assert (run / "best.safetensors").read_bytes() == before
    record = json.loads((run / "lr_find.json").read_text())
    assert np.isfinite(record["suggested_cli_lr"]) and record["strategy"] == "fine-tune"
    assert record["suggested_cli_lr"] == pytest.approx(2 * record["suggested_lr"])  # fine-tune's phase runs at lr/2
    assert (run / "lr_find.png").stat().st_size > 1000
    out = tmp_path / "lf"
    assert main(["lr-find", str(data), "--out", str(out), *FAST, "--weights", weights, "--steps", "12",
                 "--strategy", "full"]) == 0
    assert "suggested: --strategy full --lr" in capsys.readouterr().out
    assert json.loads((out / "lr_find.json").read_text())["phase"] == "full"
