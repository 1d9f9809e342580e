"""``python -m headstart.zoo``: writes ``headstart/core/catalog.json`` from the registry (after adding a backbone)."""

import json

from headstart.core.catalog import CATALOG
from headstart.zoo import list_specs


def catalog_entries() -> list[dict]:
    """What ``headstart models`` lists of each registered backbone, and where its weights may be offline. The
    parameter count is the headless backbone's (what transfers), counted on a randomly initialised build."""
    return [{"name": s.name, "family": s.family, "num_features": s.num_features, "input_size": s.input_size,
             "params_m": round(sum(p.numel() for p in s.build().parameters()) / 1e6, 1),
             "imagenet_top1": s.imagenet_top1,
             "sources": [[src.kind, list(src.where)] + ([src.sha256] if src.sha256 else [])
                         for src in s.sources if src.kind != "download"]}
            for s in list_specs()]


if __name__ == "__main__":
    CATALOG.write_text(json.dumps(catalog_entries(), indent=1) + "\n")
    print(f"written {CATALOG}")
