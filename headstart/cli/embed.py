"""headstart embed MODEL_OR_RUN DATA --out FILE: pooled backbone features for downstream tasks.

Writes one row per image: ``features`` (N, D) float32, ``paths`` and, when DATA has class folders (or is a CSV
manifest), ``labels`` (indices into ``classes``); ``split`` when DATA has train/val/test folders; ``meta`` (JSON:
backbone, weights fingerprint, preprocessing, precision). ``.npz`` always works; ``.parquet`` needs pyarrow.
Features come from the same on-disk cache as ``train``, and are streamed to the file, so the count is not bounded
by memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from headstart.cli.options import add_batch_size, add_device, add_precision, add_workers
from headstart.core.choices import DEFAULT_MODEL
from headstart.core.errors import PathNotFoundError, UsageError


def add_parser(sub):
    p = sub.add_parser("embed", help="write pooled backbone features of images to .npz or .parquet",
                       description="Features for downstream tasks (retrieval, clustering, your own classifier). "
                                   "MODEL_OR_RUN is a backbone name (see `headstart models`) or a run directory "
                                   "made by `headstart train`. DATA is a folder of class subfolders (labels are "
                                   "written), a folder of images (no labels), or a CSV manifest (path,label).",
                       epilog="examples:\n  headstart embed efficientnet_lite0 photos/ --out features.npz\n"
                              "  headstart embed runs/photos photos/ --out features.parquet",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_OR_RUN", help=f"backbone name (e.g. {DEFAULT_MODEL}) or run directory")
    p.add_argument("data", help="folder of images or class subfolders, or a CSV manifest")
    p.add_argument("--out", required=True, help="output file: .npz, or .parquet (needs pyarrow)")
    p.add_argument("--weights", default=None, help="pretrained weights file for a backbone name")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the backbone's; a run "
                                                                "keeps its own)")
    add_batch_size(p)
    add_workers(p, help='image decoding processes (default: half the cores)')
    add_device(p)
    add_precision(p)
    return p


def read_images(data: str | Path) -> dict:
    """Image paths of DATA, with labels when it has them: ``paths``, and ``labels``, ``classes``, ``split`` or None."""
    from headstart.data.images import is_image_file  # in the command, not at import: --help stays fast
    from headstart.data.sources import (  # here, not at import: --help stays fast
        SPLIT_DIRS,
        list_images,
        read_class_folders,
        read_csv_manifest,
    )

    data = Path(data)
    if not data.exists():
        raise PathNotFoundError(f"{data} does not exist; pass a folder of images or class subfolders, or a CSV.")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise UsageError(f"{data} is a file but not a .csv manifest; pass a folder of images or a CSV.")
        classes, rows = read_csv_manifest(data)
        idx = {c: i for i, c in enumerate(classes)}
        items = [(p, idx[label], split) for split, samples in rows.items() for p, label in samples]
        return {"paths": [p for p, _, _ in items], "labels": [y for _, y, _ in items], "classes": classes,
                "split": [s for _, _, s in items] if any(s != "train" for _, _, s in items) else None}
    split_dirs = {s: data / n for s, names in SPLIT_DIRS.items() for n in names if (data / n).is_dir()}
    if split_dirs:
        classes, items = None, []
        for split in ("train", "val", "test"):
            if split in split_dirs:
                classes, samples = read_class_folders(split_dirs[split], classes)
                items += [(p, y, split) for p, y in samples]
        return {"paths": [p for p, _, _ in items], "labels": [y for _, y, _ in items], "classes": classes,
                "split": [s for _, _, s in items]}
    loose = any(f.is_file() and is_image_file(f) for f in data.iterdir())
    subdirs = any(f.is_dir() and not f.name.startswith(".") for f in data.iterdir())
    if subdirs and not loose:
        classes, samples = read_class_folders(data)
        return {"paths": [p for p, _ in samples], "labels": [y for _, y in samples], "classes": classes,
                "split": None}
    paths = list_images(data)
    if not paths:
        raise UsageError(f"{data} holds no image files.")
    return {"paths": paths, "labels": None, "classes": None, "split": None}


def _model(args):
    """(model, preprocessing, runtime, description) for a backbone name or a run directory."""
    from headstart.core.runtime import make_runtime  # in the command, not at import: --help stays fast
    from headstart.zoo.model import build_model  # in the command, not at import: --help stays fast

    path = Path(args.model)
    if path.is_dir():
        from headstart.predict.run import load_run  # in the command, not at import: --help stays fast

        if args.weights or args.image_size:
            raise UsageError(f"{path} is a run: it keeps its own weights and image size; drop --weights and "
                             "--image-size, or pass a backbone name instead.")
        run = load_run(path, device=args.device, precision=args.precision)
        return run.model, run.preprocessing, run.runtime, f"run {path}"
    runtime = make_runtime(args.device, args.precision)
    model = build_model(args.model, 2, weights_file=args.weights)  # the head is not used
    runtime.prepare(model)
    return model, model.spec.preprocessing(args.image_size), runtime, model.weights_source


def write_npz(path: Path, feats, columns: dict, meta: dict) -> None:
    """Streams the features into ``features.npy`` inside the zip, so no full copy is ever in memory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("features.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (len(feats), feats.dim)})
            for chunk in feats.chunks():
                f.write(np.ascontiguousarray(chunk, dtype="<f4").data)
        for name, values in {**columns, "meta": json.dumps(meta)}.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(values), allow_pickle=False)
    os.replace(tmp, path)


def write_parquet(path: Path, feats, columns: dict, meta: dict) -> None:
    """One row per image; ``features`` is a fixed-size list of float32. Written in row groups of 4096 images."""
    import pyarrow as pa  # in the command, not at import: --help stays fast
    import pyarrow.parquet as pq  # in the command, not at import: --help stays fast

    per_image = {k: v for k, v in columns.items() if k != "classes"}
    if "labels" in columns:
        per_image["class"] = [columns["classes"][y] for y in columns["labels"]]
    types = {"paths": pa.string(), "labels": pa.int64(), "split": pa.string(), "class": pa.string()}
    schema = pa.schema([(k, types[k]) for k in per_image] + [("features", pa.list_(pa.float32(), feats.dim))],
                       metadata={"headstart": json.dumps(meta)})
    tmp = path.with_name(f".{path.name}.tmp")
    start = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for chunk in feats.chunks():
            n = len(chunk)
            cols = {k: pa.array(list(v[start:start + n]), type=types[k]) for k, v in per_image.items()}
            cols["features"] = pa.FixedSizeListArray.from_arrays(pa.array(chunk.reshape(-1), pa.float32()), feats.dim)
            writer.write_table(pa.table(cols, schema=schema))
            start += n
    os.replace(tmp, path)


def run(args) -> int:
    from headstart.features.extract import extract_features  # in the command, not at import: --help stays fast

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".npz", ".parquet"):
        raise UsageError(f"--out {out} must end in .npz or .parquet (e.g. --out features.npz).")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("writing .parquet needs pyarrow (`pip install pyarrow`); or pass an --out ending in "
                             ".npz.") from None
    found = read_images(args.data)
    model, pre, runtime, source = _model(args)
    feats = extract_features(model, found["paths"], pre, runtime, batch_size=args.batch_size, workers=args.workers,
                             desc="embed")
    if not len(feats):
        raise UsageError(f"none of the {len(found['paths'])} images in {args.data} could be decoded.")
    keep = feats.positions
    columns: dict = {"paths": np.asarray(feats.paths)}
    if found["labels"] is not None:
        columns["labels"] = np.asarray(found["labels"], dtype=np.int64)[keep]
        columns["classes"] = np.asarray(found["classes"])
    if found["split"] is not None:
        columns["split"] = np.asarray(found["split"])[keep]
    meta = {**feats.cache.key, "source": source, "skipped": [{"path": p, "reason": r} for p, r in feats.bad]}
    out.parent.mkdir(parents=True, exist_ok=True)
    (write_parquet if suffix == ".parquet" else write_npz)(out, feats, columns, meta)
    print(f"wrote {len(feats)} x {feats.dim} features to {out} ({feats.computed} images computed, the rest from "
          f"the cache{f'; {len(feats.bad)} file(s) skipped' if feats.bad else ''})", file=sys.stderr)
    return 0
