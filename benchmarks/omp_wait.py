"""Does ``OMP_WAIT_POLICY=PASSIVE`` help or hurt? The backbone's throughput with the policy unset, PASSIVE and
ACTIVE, on an idle machine and with one busy process beside it (what a shared machine or a loader worker does).

OpenMP threads that finish a parallel region spin for a while before sleeping (ACTIVE-like); on a machine whose
cores are shared, spinning threads take time from the process that has work. PASSIVE makes them sleep at once,
which costs a wake-up on every region. Each setting runs in a fresh process (the policy is read when OpenMP
starts), interleaved, ``--repeats`` times; the median is reported.

Example (about 3 minutes on 2 CPU cores):

    python benchmarks/omp_wait.py --image-size 224 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = """
import time, torch
from headstart.core.runtime import make_runtime
from headstart.zoo.model import build_model
r = make_runtime("cpu", "fp32")
m = r.prepare(build_model("efficientnet_lite0", 10)).eval()
x = r.to_input(torch.randn({batch}, 3, {size}, {size}))
with torch.inference_mode():
    m(x)
    t0 = time.perf_counter()
    for _ in range({batches}):
        m(x)
print({batches} * {batch} / (time.perf_counter() - t0))
"""


def measure(policy: str | None, size: int, batch: int, batches: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    code = CHILD.format(batch=batch, size=size, batches=batches)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    policies = [None, "PASSIVE", "ACTIVE"]
    results: dict[str, dict[str, float]] = {}
    for load in ("idle", "one busy process"):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
        try:
            runs = {str(p): [] for p in policies}
            for _ in range(args.repeats):
                for p in policies:
                    runs[str(p)].append(measure(p, args.image_size, args.batch, args.batches))
            results[load] = {p: statistics.median(v) for p, v in runs.items()}
        finally:
            if hog is not None:
                hog.kill()
        base = results[load]["None"]
        print(f"{load:18s} " + "  ".join(f"{p or 'unset'}: {v:.1f} img/s ({v / base:.2f}x)"
                                          for p, v in results[load].items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"image_size": args.image_size, "batch": args.batch, "img_per_s": results,
                       "when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
    main()
