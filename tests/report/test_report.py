"""``headstart report``: a self-contained page per run and per compare folder, checked in headless Chromium; the
TensorBoard hook, read back from its event files."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from headstart.cli import main
from headstart.data.rundir import RunDir
from headstart.report import TensorBoardLogger, write_report
from tests.conftest import add_broken_files, make_class_folder

FAST = ["--image-size", "64", "--batch-size", "8", "--workers", "0"]
# The same Chromium as test_serve.py: HEADSTART_CHROMIUM, else chromium on the PATH.
CHROMIUM = Path(os.environ.get("HEADSTART_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
RUN_SECTIONS = ("data", "setup", "training", "results", "calibration", "top-losses")


@pytest.fixture(scope="module", autouse=True)
def _fp32_on_every_cpu():
    """The run, its evaluation and its report compute in fp32 as on a CPU without native bf16: the pages count the
    mistakes exactly ('got 1 wrong'), and with bf16 features this 33-image probe makes one more (measured)."""
    from headstart.core import hardware

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hardware, "cpu_has_native_bf16", lambda flags=None: False)
        yield


@pytest.fixture(scope="module")
def run_with_test(tmp_path_factory):
    """A linear-probe run on train/val/test folders, with broken files in train and a green image filed under
    test/red (a mislabelled file: the top loss), then evaluated on other labelled images."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    make_class_folder(data / "train", per_class=8)
    make_class_folder(data / "val", per_class=3, seed=1)
    make_class_folder(data / "test", per_class=4, seed=2)
    bad = add_broken_files(data / "train" / "red")
    stray = make_class_folder(root / "stray", per_class=1, classes=("green",), seed=9) / "green" / "green_00.png"
    shutil.move(stray, data / "test" / "red" / "mislabelled.png")
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", *FAST]) == 0
    other = make_class_folder(root / "other", per_class=2, seed=5)
    assert main(["evaluate", str(run), str(other), "--json"]) == 0
    return run, bad


def external_references(html: str) -> list[str]:
    """Anything the page would fetch from elsewhere: URLs, root-relative sources, linked stylesheets, scripts."""
    found = re.findall(r"https?://[^\s\"'<>)]*", html)
    found += re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)[^"'\s>]+""", html)
    found += re.findall(r"<link\b[^>]*>|<script\b[^>]*\bsrc\b[^>]*>|@import|url\((?!data:)", html)
    return found


def check_in_chromium(page_file: Path) -> None:
    """Opens the page in headless Chromium: no console errors, every image decoded."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip install playwright) is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set HEADSTART_CHROMIUM)")
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith(
                ("file:", "data:")) else None)
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        finally:
            browser.close()
    assert errors == []
    assert widths and all(w > 0 for w in widths), widths
    assert headings


@pytest.mark.slow
def test_report_of_a_run_has_every_section_and_is_self_contained(run_with_test, capsys):
    run, bad = run_with_test
    assert main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    html = (run / "report.html").read_text(encoding="utf-8")
    assert external_references(html) == []
    for anchor in (*RUN_SECTIONS, "evaluation"):
        assert f'<section id="{anchor}">' in html, anchor
    assert "test accuracy" in html and "linear-probe" in html and "efficientnet_lite0" in html
    assert all(p.name in html for p in bad) and "3 file(s) left out" in html
    # the mislabelled file is the top loss: a green image the model calls green, filed as red
    top = html[html.index('<section id="top-losses">'):]
    assert "mislabelled.png" in top and "got 1 wrong" in top
    first = top[top.index('class="thumb"'):]
    assert "mislabelled.png" in first[:first.index("</div></div>")]
    assert top.count('class="thumb"') >= 1 and "data:image/" in top
    assert html.count("<img ") == html.count('<img src="data:image/')
    # beside each top loss, its Grad-CAM heat map for the predicted class (the network loaded through torch)
    assert top.count('alt="Grad-CAM for ') == top.count('class="thumb"') and "No heat maps" not in top
    assert main(["report", str(run), "--out", str(run.parent / "plain.html"), "--no-heatmaps"]) == 0
    assert "Grad-CAM" not in (run.parent / "plain.html").read_text(encoding="utf-8")



def test_an_unchanged_figure_is_not_drawn_again(run_with_test, monkeypatch):
    """``evaluate`` refreshes the report: its figures are files in the run, drawn again only when what they show
    (metrics.jsonl, summary.json, the test figures and the last evaluation) is newer."""
    import os

    from headstart.data.rundir import RunDir
    from headstart.report import figures, write_report

    run, _ = run_with_test
    write_report(run)
    first = (run / "report.html").read_text(encoding="utf-8")
    assert (run / RunDir.RELIABILITY).is_file()  # a probe has no curves to draw; its calibration is a file
    drawn, original = [], figures.reliability_diagrams

    def reliability_diagrams(panels):
        drawn.append(len(panels))
        return original(panels)

    monkeypatch.setattr(figures, "reliability_diagrams", reliability_diagrams)
    write_report(run)
    again = (run / "report.html").read_text(encoding="utf-8")
    pictures = [part.split('"')[0] for part in first.split('src="data:image/png;base64,')[1:]]
    assert pictures and pictures == [part.split('"')[0] for part in again.split('src="data:image/png;base64,')[1:]]
    assert drawn == []
    # evaluate again on the same images: evaluation.json and the confusion matrix stay as they were, so the
    # refreshed report draws nothing again
    evaluated = {n: (run / n).stat().st_mtime_ns for n in (RunDir.EVALUATION, RunDir.CONFUSION)}
    other = run.parent / "other"
    assert main(["evaluate", str(run), str(other), "--json"]) == 0
    assert drawn == [] and {n: (run / n).stat().st_mtime_ns for n in evaluated} == evaluated
    later = (run / RunDir.RELIABILITY).stat().st_mtime_ns + 10**9
    os.utime(run / RunDir.SUMMARY, ns=(later, later))  # the calibration it shows changed
    write_report(run)
    assert len(drawn) == 1


@pytest.mark.slow
def test_run_report_renders_in_headless_chromium(run_with_test):
    from headstart.predict.run import load_run

    run, _ = run_with_test
    page = write_report(run, run.parent / "elsewhere" / "page.html", top_losses=4, loaded=load_run(run, device="cpu"))
    assert page.read_text(encoding="utf-8").count('class="thumb"') == 1  # the one mistake, not padded
    check_in_chromium(page)


@pytest.mark.slow
def test_run_without_test_split_still_reports(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", *FAST]) == 0
    html = write_report(run).read_text(encoding="utf-8")
    assert "No test split" in html and "This run has no test split" in html
    assert '<section id="top-losses">' in html and "validation images" in html
    assert 'id="evaluation"' not in html and external_references(html) == []


def test_train_and_evaluate_without_heat_maps(tmp_path):
    """``--no-heatmaps``: the report's top losses without Grad-CAM, and none drawn into the run."""
    data = make_class_folder(tmp_path / "data", per_class=6, size=32)
    test = make_class_folder(tmp_path / "test", per_class=2, size=32, seed=4)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", "--no-heatmaps", *FAST]) == 0
    assert RunDir(run).config()["heatmaps"] is False
    assert "Grad-CAM for " not in (run / "report.html").read_text(encoding="utf-8")
    assert main(["evaluate", str(run), str(test), "--no-heatmaps"]) == 0
    assert "Grad-CAM for " not in (run / "report.html").read_text(encoding="utf-8")
    assert not (run / "heatmaps").exists()


@pytest.mark.slow
def test_old_partial_and_adapted_runs_get_sentences_not_errors(run_with_test, tmp_path, capsys):
    run, _ = run_with_test
    old = tmp_path / "old"
    shutil.copytree(run, old)
    summary = json.loads((old / "summary.json").read_text())
    summary.pop("calibration")
    (old / "summary.json").write_text(json.dumps(summary))
    for name in ("metrics.jsonl", "test_metrics.json", "evaluation.json", "split.json", "leakage.json"):
        (old / name).unlink()
    html = write_report(old, top_losses=0).read_text(encoding="utf-8")
    assert "records no calibration" in html and "no record of its epochs" in html
    assert "no split.json" in html and 'id="top-losses"' not in html
    shutil.copy2(run / "split.json", old / "split.json")
    (old / "best.safetensors").unlink()  # training never finished an epoch
    html = write_report(old).read_text(encoding="utf-8")
    assert "could not predict" in html and "best.safetensors" in html

    target = make_class_folder(tmp_path / "target", per_class=2, seed=3)
    adapted = tmp_path / "adapted"
    assert main(["adapt", str(run), str(target), "--out", str(adapted), "--batch-size", "4", "--workers", "0"]) == 0
    capsys.readouterr()
    html = write_report(adapted, top_losses=2).read_text(encoding="utf-8")
    assert '<section id="adaptation">' in html and "an adapted run is not trained" in html
    assert external_references(html) == []


@pytest.mark.slow
def test_compare_folder_report_inlines_tables_and_both_plots(tmp_path):
    from headstart.training.compare import CompareConfig, markdown, plot, summarise

    out = tmp_path / "cmp"
    out.mkdir()
    results = [{"strategy": s, "labels_per_class": n, "seed": seed, "model": "resnet20" if s == "scratch" else
                "efficientnet_lite0", "test_acc": acc + 0.01 * seed, "test_balanced_acc": acc, "seconds": 10.0 + n,
                "best_epoch": 2, "trainable_params": 1000, "val_acc": acc, "best_val_loss": 0.5,
                "lr": 1e-3 if s == "scratch" else None, "image_size": 64, "weights": "package", "epochs_run": 3,
                "phases": "probe"}
               for seed in range(2) for n in (5, 10) for s, acc in (("scratch", 0.4), ("linear-probe", 0.7))]
    rows = summarise(results)
    cfg = CompareConfig(data=str(tmp_path / "data"), out=str(out), strategies=["scratch", "linear-probe"],
                        labels_per_class=[5, 10], seeds=2)
    figures = plot(rows, results, out)
    (out / "compare.md").write_text(markdown(rows, results, cfg, 100))
    (out / "compare.json").write_text(json.dumps({"config": cfg.__dict__, "test_images": 100, "rows": rows,
                                                  "runs": results, "figures": figures}))
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert external_references(html) == []
    assert html.count('<img src="data:image/png;base64,') == 2 and "<table>" in html
    assert "linear-probe · 10 labels/class" in html and "71.0%" in html  # the lead card: best at the largest budget
    assert "What each side got" in html and "<strong>scratch</strong>" in html
    check_in_chromium(out / "report.html")

    (out / "compare.md").unlink()  # a comparison still running: rows so far, no plots yet
    for name in figures:
        (out / name).unlink()
    data = json.loads((out / "compare.json").read_text())
    data.pop("figures")
    (out / "compare.json").write_text(json.dumps(data))
    html = write_report(out).read_text(encoding="utf-8")
    assert "has not finished" in html and "No plots in this folder yet" in html and "<table>" in html


def test_report_of_a_folder_that_is_neither_exits_2_with_one_sentence(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "compare" in err and "Traceback" not in err


def test_tensorboard_logger_writes_each_record_and_the_confusion_matrix(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is the optional extra headstart[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [
        {"phase": "head", "epoch": 1, "global_epoch": 1, "val_loss": 0.9, "val_loss_calibrated": 0.85, "val_acc": 0.6,
         "val_temperature": 1.2, "trainable_params": 30, "seconds": 1.0, "head": "logreg"},
        {"phase": "fine-tune", "epoch": 1, "global_epoch": 2, "train_loss": 0.8, "train_acc": 0.7, "val_loss": 0.7,
         "val_loss_calibrated": 0.65, "val_acc": 0.75, "val_temperature": 1.1, "lr": 5e-4,
         "lrs": {"stage3": 5e-5, "stage4": 5e-5, "head": 5e-4}, "trainable_params": 3000, "seconds": 2.0},
        {"phase": "fine-tune", "epoch": 2, "global_epoch": 3, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6,
         "val_loss_calibrated": 0.55, "val_acc": 0.8, "val_temperature": 1.0, "lr": 2e-4, "trainable_params": 3000,
         "seconds": float("nan")},
    ]
    logger = TensorBoardLogger(tmp_path / "tb")
    for r in records:
        logger.on_epoch(r)
    test_metrics = {"accuracy": 0.75, "balanced_accuracy": 0.75, "num_images": 4, "classes": ["a", "b"],
                    "confusion_matrix": [[2, 0], [1, 1]]}
    logger.close({"best_epoch": 3, "test_acc": 0.75, "test_balanced_acc": 0.75, "val_acc": 0.8,
                  "calibration": {"test": {"ece_before": 0.1, "ece_after": 0.05}}}, test_metrics)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "loss/val_calibrated", "accuracy/train", "accuracy/val", "lr/head",
            "lr/stage3", "lr/stage4", "calibration/val_temperature", "test/accuracy", "test/balanced_accuracy",
            "calibration/test_ece_after"} <= set(tags["scalars"])
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("accuracy/val")] == [(1, 0.6), (2, 0.75), (3, 0.8)]
    assert [e.step for e in events.Scalars("loss/train")] == [2, 3]  # a head fitted on features has no train loss
    assert [e.step for e in events.Scalars("lr/head")] == [2, 3] and [e.step for e in events.Scalars("lr/stage3")] \
        == [2]
    assert [e.step for e in events.Scalars("time/epoch_seconds")] == [1, 2]  # NaN left out
    assert "test/confusion_matrix" in tags["images"]
    image = events.Images("test/confusion_matrix")[0]
    assert image.width > 100 and image.height > 100


def test_overwrite_removes_the_tensorboard_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.path / RunDir.TENSORBOARD).mkdir(parents=True)
    (run.path / RunDir.TENSORBOARD / "events.out.tfevents.1").write_bytes(b"x")
    (run.path / RunDir.CONFIG).write_text("model: x\n")
    run.prepare(overwrite=True)
    assert not (run.path / RunDir.TENSORBOARD).exists() and not (run.path / RunDir.CONFIG).exists()


def test_train_writes_the_report_and_tensorboard_events_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from headstart.cli import main
    from tests.conftest import make_class_folder

    data = make_class_folder(tmp_path / "d", per_class=6)
    torch = pytest.importorskip("torch")
    from headstart.zoo import create_backbone

    weights = tmp_path / "w.pth"
    torch.save(create_backbone("resnet20", pretrained=False)[0].state_dict(), weights)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--model", "resnet20", "--weights", str(weights),
                 "--strategy", "fine-tune", "--epochs", "2", "--workers", "0", "--batch-size", "4",
                 "--tensorboard"]) == 0
    assert (run / "report.html").stat().st_size > 10_000
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert any("val" in t and "loss" in t for t in tags) and any("lr" in t for t in tags)
    record = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"lrs"' in line]
    assert record  # every layer group's learning rate is recorded for the SGD epochs
