"""`train --choose` against today's default, as whole commands (issue 23).

For each data set and seed: `headstart train --strategy linear-probe` with the default backbone (EfficientNet-Lite0
at 224 px), with `--choose fast` and with `--choose balanced`, each from a cold feature cache (the speed figures of
`headstart models --measure` are kept between runs, as on a user's machine after the first). Records the chosen
candidate, test accuracy (never seen by the choice) and wall time. Data sets as in backbone_candidates.py.

    python benchmarks/backbone_choice.py --out /tmp/choice --labels 10 50 --seeds 0 1 2
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from backbone_candidates import arguments, make_sets, timed_train  # noqa: E402  (the same folders and command)

ARMS = {"default (Lite0 224 px)": [], "--choose fast": ["--choose", "fast"],
        "--choose balanced": ["--choose", "balanced"]}


def run_arm(folder: Path, extra: list[str], seed: int, out: Path, speeds: Path) -> dict:
    cache = out.with_name(out.name + ".cache")
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    if speeds.exists():
        shutil.copy(speeds, cache / "speeds.json")
    got = timed_train(folder, extra, seed, out, cache)
    if (cache / "speeds.json").exists():
        shutil.copy(cache / "speeds.json", speeds)
    shutil.rmtree(cache, ignore_errors=True)
    if "error" in got:
        return got
    return {"model": got["config"]["model"], "size": got["config"]["preprocessing"]["image_size"],
            "val_acc": got["summary"].get("val_acc"), "test_acc": got["test"].get("accuracy"),
            "wall_s": got["wall_s"]}


def main() -> None:
    args = arguments(__doc__)
    results, speeds = [], args.out / "speeds.json"
    for seed in args.seeds:
        for name, folder in make_sets(args.out / "data", args.labels, seed).items():
            for arm, extra in ARMS.items():
                r = {"set": name, "arm": arm, "seed": seed, **run_arm(folder, extra, seed, args.out / "run", speeds)}
                results.append(r)
                print(json.dumps(r), flush=True)
                (args.out / "choice.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
