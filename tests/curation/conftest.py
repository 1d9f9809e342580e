"""Small real images (scikit-learn's digits) and a linear-probe run both curation commands use."""

import numpy as np
import pytest
from PIL import Image

from headstart.cli import main


def digits_folder(root, classes=(0, 1, 7), per_class=12, start=0):
    """scikit-learn's digits as PNGs in class folders: ``per_class`` of each class from the ``start``-th on."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(d.target == c)[start:start + per_class]:
            Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(root / str(c) / f"d{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def probe_run(tmp_path_factory):
    """``(data folder, run directory)``: Lite0 at 64 px on 12 digits of each of 0, 1 and 7."""
    root = tmp_path_factory.mktemp("curation")
    data = digits_folder(root / "data")
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", "--image-size", "64",
                 "--workers", "0"]) == 0
    return data, run
