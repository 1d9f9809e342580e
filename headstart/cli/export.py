"""headstart export RUN [--format onnx|pt2] [--out FILE] [--quantize int8]

Writes one file that predicts without the run (classes, preprocessing and temperature inside), after checking it
against the run on the run's own images; the figures go to export.json beside it. stdout holds the result (one JSON
object with --json); messages go to stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from headstart.cli.options import add_json
from headstart.core.choices import EXPORT_FORMATS, QUANTIZATIONS

EXAMPLE = """examples:
  headstart export runs/photos                          # runs/photos/model.onnx and export.json
  headstart export runs/photos --format pt2             # runs/photos/model.pt2 (torch.export)
  headstart export runs/photos --quantize int8          # runs/photos/model.int8.onnx, accuracy change measured
  headstart predict runs/photos/model.onnx new_photos/  # predict with it, without torch"""


def add_parser(sub):
    p = sub.add_parser("export", help="export a run's model to ONNX or torch.export, checked against the run",
                       description="Export a run's model to one file that holds its classes, preprocessing and "
                                   "calibration, after checking that it gives the run's outputs on the run's "
                                   "images (it is not written when it does not).",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory made by `headstart train`")
    # Checked by export_run rather than argparse's choices: a wrong value gets one sentence and exit code 2.
    p.add_argument("--format", default="onnx", metavar="{" + ",".join(EXPORT_FORMATS) + "}",
                   help="; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items()) + " (default onnx)")
    p.add_argument("--out", metavar="FILE", help="file to write (default RUN/model.onnx, RUN/model.int8.onnx or "
                                                 "RUN/model.pt2); export.json goes beside it")
    p.add_argument("--quantize", metavar="{" + ",".join(QUANTIZATIONS) + "}",
                   help="int8: ONNX Runtime's dynamic quantization (onnx only; a quarter of the size); its top-1 "
                        "agreement and accuracy change are measured and recorded instead of held to --tolerance")
    p.add_argument("--max-images", type=int, default=256,
                   help="how many of the run's images the parity check uses (validation first; default 256)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest difference in any probability the exported model may show (default 1e-4)")
    add_json(p, "print export.json's record for the file on stdout")
    return p


def run(args) -> int:
    from headstart.export.exporter import export_run  # in the command, not at import: --help stays fast

    record = export_run(args.run, args.format, out=args.out, quantize=args.quantize, max_images=args.max_images,
                        tolerance=args.tolerance, log=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    p, n = record["parity"], record["images"]
    agree = f"{round(p['top1_agreement'] * n)}/{n}"
    same = "label sets" if "label_set_agreement" in p else "top-1"  # a multi-label run: every label given
    print(f"wrote {record['file']} ({record['bytes'] / 1e6:.1f} MB) in {record['seconds']:.0f} s")
    if args.quantize:
        change = f", accuracy {p['accuracy_change'] * 100:+.1f} points" if "accuracy_change" in p else ""
        print(f"int8: the same {same} as the run on {agree} images{change} (fp32 graph within {record['tolerance']:g}: "
              f"max probability difference {record['fp32_parity']['max_prob_diff']:.1g})")
        if p["top1_agreement"] < 0.99:
            print(f"note: int8 changes {p['top1_disagreements']} of {n} predictions; keep the fp32 model unless "
                  "that is acceptable.", file=sys.stderr)
    else:
        print(f"parity: the same {same} as the run on {agree} images, max probability difference "
              f"{p['max_prob_diff']:.1g} (tolerance {record['tolerance']:g})")
    if pil := record.get("pil_preprocessing"):
        print(f"ONNX Runtime with headstart's PIL preprocessing (as `predict` uses it): the same top-1 on "
              f"{round(pil['top1_agreement'] * n)}/{n}, max probability difference {pil['max_prob_diff']:.1g}")
    print(f"figures in {Path(record['file']).with_name('export.json')}")
    if record["format"] == "onnx":
        print(f"next:\n  headstart predict {record['file']} IMAGES...")
    return 0
