"""The run directory (RunDir), atomic writes, and the command line's answers to wrong options."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from headstart.cli import main
from headstart.core.errors import OutputError
from headstart.core.io import read_jsonl, write_json
from headstart.data.rundir import RunDir
from headstart.report.figures import kept
from tests.conftest import make_class_folder


def test_atomic_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_torn_last_metrics_line_is_left_out_and_others_are_errors(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"global_epoch": 1})
    run.append_metrics({"global_epoch": 2})
    with open(tmp_path / run.METRICS, "a") as f:
        f.write('{"global_epoch": 3, "val_lo')  # the process died mid-write
    assert [r["global_epoch"] for r in run.metrics()] == [1, 2]
    run.keep_metrics_until(2)  # resume rewrites the file without the torn line
    assert (tmp_path / run.METRICS).read_text().count("\n") == 2
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_prepare_removes_every_file_of_the_previous_run_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in (RunDir.CONFIG, RunDir.TEST_METRICS, RunDir.EVALUATION, RunDir.LAST, RunDir.SUMMARY):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already holds a run"):
        RunDir(out).prepare(overwrite=False)
    RunDir(out).prepare(overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_prepare_refuses_folders_that_are_not_runs_and_folders_inside_the_data(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.docx").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not a headstart run"):
            RunDir(theirs).prepare(overwrite=overwrite)
    assert (theirs / "thesis.docx").exists()
    leftover = tmp_path / "leftover"  # a failed start left only run files: reused
    leftover.mkdir()
    (leftover / RunDir.SKIPPED).write_text("[]")
    RunDir(leftover).prepare(overwrite=False)
    data = make_class_folder(tmp_path / "data", per_class=2)
    with pytest.raises(OutputError, match="inside the data folder"):
        RunDir(data / "runs" / "a").prepare(overwrite=False, inside=data)


@pytest.mark.parametrize("option, message", [
    (["--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--image-size", "7"], "--image-size must be at least 32"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["--epochs", "0"], "--epochs must be a whole number of at least 1"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
])
def test_wrong_options_fail_before_any_work_in_one_sentence(tmp_path, capsys, option, message):
    data = make_class_folder(tmp_path / "d", per_class=2)
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), *option]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing made: no folder holding only skipped.json


def test_predict_topk_must_be_positive(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "x.png", "--topk", "0"]) == 2
    assert "--topk must be at least 1" in capsys.readouterr().err


def test_help_version_usage_errors_and_models_do_not_load_torch():
    code = ("import sys; from headstart.cli import main\n"
            "for argv in (['--version'], ['--help'], ['train', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "assert main(['train', 'd', '--out', 'o', '--lr', '-1']) == 2\n"
            "assert main(['models', '--json']) == 0\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "headstart 0." in done.stdout


def test_run_split_finds_old_relative_paths_from_another_folder(tmp_path, monkeypatch):
    """Runs from before split.json stored absolute paths: found from any current folder."""
    project = tmp_path / "project"
    data = make_class_folder(project / "data", per_class=2)
    run = project / "runs" / "a"
    run.mkdir(parents=True)
    (run / RunDir.CONFIG).write_text("data: data\nout: runs/a\n")
    rel = [[f"data/red/{p.name}", "red"] for p in sorted((data / "red").iterdir())]
    (run / RunDir.SPLIT).write_text(json.dumps({"classes": ["red"], "layout": "", "train": rel, "val": [],
                                                "test": []}))
    monkeypatch.chdir(tmp_path)  # not where train ran
    train = RunDir(run).split().train
    assert all(os.path.isabs(p) and os.path.isfile(p) for p, _ in train)


def test_a_figure_is_a_run_file_drawn_again_only_when_its_data_is_newer(tmp_path):
    made = []

    def draw(value):
        made.append(value)
        return value.encode()

    source, path = tmp_path / "metrics.jsonl", tmp_path / "curves.png"
    source.write_text("{}")
    assert kept(path, [source], draw, "one") == b"one" and path.read_bytes() == b"one"
    assert kept(path, [source], draw, "two") == b"one" and made == ["one"]
    later = path.stat().st_mtime_ns + 10**9
    os.utime(source, ns=(later, later))
    assert kept(path, [source], draw, "three") == b"three" and path.read_bytes() == b"three"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # cannot hold the figure: drawn every time, no error
    assert kept(blocked / "x.png", [source], draw, "four") == b"four" and made == ["one", "three", "four"]
