"""How well headstart tells copies from distinct pictures: the share of distinct images wrongly left out, and the
share of planted copies caught, through the same files and code as ``train`` and ``evaluate``.

    python benchmarks/duplicates.py --out /tmp/duplicates   # about 2 minutes on 2 cores; writes duplicates.json

Distinct images: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) at its own 28 px and upscaled to 64 px,
scikit-learn's digits (8 px) and scikit-image's sample pictures. Each set is written as PNG files and split in two
halves, "fitted" and "held out"; ``copies_of(fitted, held_out)`` is exactly what leaves a test image out of a
figure, so the share it flags is the share a run would wrongly drop (the sets may hold a few true copies: flagged
pairs are listed). Planted copies: each of the first ``--plants`` images of a set, changed in one of 14 ways (JPEG
quality 60/75/90, PNG to JPEG, resize 0.5/0.75/1.5/2x, brightness and contrast x0.85/x1.15, a 1-pixel shift
right or down), is looked for among the originals. The rule before thumbnails (perceptual hashes within 6 bits,
for images of 64 px or more) is measured beside the rule now, on the same files.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headstart.data.check import inspect_files
from headstart.data.leakage import copies_of, fingerprints, near_pairs

SKIMAGE = ["astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
           "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket",
           "text"]  # cat() is chelsea again


def image_sets(n: int):
    from sklearn.datasets import load_digits

    from headstart.data import fashion_mnist

    x, _ = fashion_mnist.load("train")
    idx = np.random.default_rng(0).choice(len(x), n, replace=False)
    yield "fashion-mnist 28 px", [Image.fromarray(x[i]) for i in idx]
    yield "fashion-mnist 64 px", [Image.fromarray(x[i]).resize((64, 64), Image.Resampling.BICUBIC) for i in idx]
    digits = load_digits().images
    yield "digits 8 px", [Image.fromarray((d * 255 / 16).astype(np.uint8)) for d in digits]
    import skimage.data

    pictures = []
    for name in SKIMAGE:
        a = getattr(skimage.data, name)()
        a = a.astype(np.uint8) * 255 if a.dtype == bool else a
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(1e-9, float(a.max() - a.min()))).astype(np.uint8)
        pictures.append(Image.fromarray(a[..., :3] if a.ndim == 3 else a))
    yield "scikit-image samples", pictures


def _encoded(im: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


def plants(im: Image.Image) -> dict[str, tuple[Image.Image, str]]:
    """The planted copies of ``im``: name -> (image, file suffix)."""
    w, h = im.size
    rgb = im.convert("RGB")
    out = {f"jpeg q{q}": (_encoded(rgb, "JPEG", quality=q), ".jpg") for q in (60, 75, 90)}
    out["png to jpeg"] = (_encoded(rgb, "JPEG", quality=95), ".jpg")
    for s in (0.5, 0.75, 1.5, 2.0):
        out[f"resize {s:g}x"] = (im.resize((max(1, round(w * s)), max(1, round(h * s))),
                                           Image.Resampling.BICUBIC), ".png")
    for f in (0.85, 1.15):
        out[f"brightness x{f:g}"] = (ImageEnhance.Brightness(im).enhance(f), ".png")
        out[f"contrast x{f:g}"] = (ImageEnhance.Contrast(im).enhance(f), ".png")
    a = np.asarray(im)
    out["shift 1 px right"] = (Image.fromarray(np.concatenate([a[:, :1], a[:, :-1]], axis=1)), ".png")
    out["shift 1 px down"] = (Image.fromarray(np.concatenate([a[:1], a[:-1]], axis=0)), ".png")
    return out


def old_rule(reference: dict, facts: dict) -> set[str]:
    """The rule before thumbnails: same bytes, or perceptual hashes within 6 bits (images of 64 px or more)."""
    shas = {r["sha"] for r in reference.values()}
    ok = {p: f for p, f in facts.items() if f.error is None}
    big = {p for p in ok if max(Image.open(p).size) >= 64}
    ref_hashes = {int(r["phash"], 16) for p, r in reference.items() if max(Image.open(p).size) >= 64}
    own = {ok[p].phash for p in big}
    matched = own & ref_hashes
    distinct = sorted(ref_hashes | own)
    for i, j, _ in near_pairs(np.array(distinct, np.uint64), 6):
        for a, b in ((distinct[i], distinct[j]), (distinct[j], distinct[i])):
            if a in ref_hashes and b in own:
                matched.add(b)
    return {p for p, f in ok.items() if f.sha in shas or (p in big and f.phash in matched)}


def measure(name: str, images: list[Image.Image], folder: Path, n_plants: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(str(folder / f"{i:05d}.png"))
        im.save(paths[-1])
    t0 = time.time()
    facts = inspect_files(paths)
    fitted, held = paths[0::2], paths[1::2]
    reference = fingerprints(facts, fitted)
    flagged = copies_of(reference, {p: facts[p] for p in held})
    seconds = time.time() - t0
    before = old_rule(reference, {p: facts[p] for p in held})
    result = {"images": len(paths), "size": list(images[0].size), "held_out": len(held),
              "wrongly_dropped": len(flagged), "wrongly_dropped_share": len(flagged) / len(held),
              "wrongly_dropped_before": len(before), "wrongly_dropped_share_before": len(before) / len(held),
              "flagged_pairs": {Path(p).name: {"copy_of": Path(c["copy_of"]).name, "similarity": c["similarity"]}
                                for p, c in sorted(flagged.items())},
              "check_and_compare_seconds": round(seconds, 2)}
    originals = paths[:n_plants]
    reference = fingerprints(facts, originals)
    planted: dict[str, list[str]] = {}
    target: dict[str, str] = {}
    for i, p in enumerate(originals):
        for kind, (im, suffix) in plants(images[i]).items():
            q = str(folder / f"plant_{i:05d}_{kind.replace(' ', '_')}{suffix}")
            im.save(q)
            planted.setdefault(kind, []).append(q)
            target[q] = p
    plant_facts = inspect_files([q for qs in planted.values() for q in qs])
    found = copies_of(reference, plant_facts)
    found_before = old_rule(reference, plant_facts)
    result["planted"] = {kind: {"caught": sum(q in found and found[q]["copy_of"] == target[q] for q in qs),
                                "caught_before": sum(q in found_before for q in qs), "of": len(qs)}
                         for kind, qs in planted.items()}
    result["planted_caught_share"] = (sum(v["caught"] for v in result["planted"].values())
                                      / sum(v["of"] for v in result["planted"].values()))
    print(f"{name}: {len(flagged)} of {len(held)} distinct held-out images flagged ({len(before)} before); planted "
          f"copies caught {result['planted_caught_share']:.1%}", file=sys.stderr)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/duplicates")
    p.add_argument("--images", type=int, default=3000, help="Fashion-MNIST images per size")
    p.add_argument("--plants", type=int, default=200, help="images of each set copied in every planted way")
    p.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs" / "measurements"))
    args = p.parse_args(argv)
    out = Path(args.out)
    results = {name: measure(name, images, out / name.replace(" ", "_"), args.plants)
               for name, images in image_sets(args.images)}
    from headstart.data.leakage import MIN_SIMILARITY, NEAR_BITS, THUMB_SIDE

    record = {"command": "python benchmarks/duplicates.py --out /tmp/duplicates",
              "rule": f"same bytes, or perceptual hash within {NEAR_BITS} bits confirmed by a {THUMB_SIDE}x"
                      f"{THUMB_SIDE} grey thumbnail correlation >= {MIN_SIMILARITY} (images of 16 px or more)",
              "rule_before": "same bytes, or perceptual hash within 6 bits (images of 64 px or more), chained",
              "sets": results}
    text = json.dumps(record, indent=1)
    (out / "duplicates.json").write_text(text)
    if args.docs:
        Path(args.docs, "duplicates.json").write_text(text)
    print(text[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
