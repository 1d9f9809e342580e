"""headstart cache info|clear"""

from __future__ import annotations

import argparse
import json
import time

from headstart.cli import options


def add_parser(sub):
    p = sub.add_parser("cache", help="show or clear the feature cache (frozen-backbone features by image content)",
                       description="The feature cache keeps frozen-backbone features by image content, so a second "
                                   "linear probe on the same images skips the backbone. It lives in "
                                   "$HEADSTART_CACHE (default ~/.cache/headstart/features) and is kept under "
                                   "$HEADSTART_CACHE_MAX_GB (default 20): past it the least recently used "
                                   "backbone/preprocessing namespaces are removed.",
                       epilog="examples:\n  headstart cache info\n  headstart cache clear            # everything\n"
                              "  headstart cache clear 1a2b3c4d5e6f7a8b9c0d",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["info", "clear"], help="info: list namespaces and sizes; clear: remove them")
    p.add_argument("names", nargs="*", help="clear only these namespaces (the folder names `info` lists)")
    options.add_json(p, "info as one JSON array on stdout")
    return p


def run(args) -> int:
    from headstart.features.cache import (  # numpy: not for --help
        FACTS_FOLDER,
        cache_root,
        clear,
        folder_bytes,
        namespaces,
        size_limit,
    )

    root = cache_root()
    if args.action == "clear":
        freed = clear(root, args.names or None)
        print(f"removed {freed / 1e6:.1f} MB from {root}")
        return 0
    spaces = namespaces(root)
    if args.json:
        print(json.dumps(spaces, indent=1))
        return 0
    facts = folder_bytes(root / FACTS_FOLDER)
    total = sum(n["bytes"] for n in spaces) + facts
    print(f"{root}: {len(spaces)} namespace(s), {total / 1e6:.1f} MB of {size_limit() / 1e9:.0f} GB allowed")
    if facts:
        print(f"  facts/  what `check` found in each image, by content: {facts / 1e6:.1f} MB (cleared with "
              "`headstart cache clear`; evicted with the namespaces, least recently used first)")
    for n in reversed(spaces):
        age = (time.time() - n["last_used"]) / 86400
        print(f"  {n['dir'].rsplit('/', 1)[-1]}  {n['backbone']} {n['image_size']} px {n['precision']}: "
              f"{n['images']} images, {n['bytes'] / 1e6:.1f} MB, used {age:.1f} days ago")
    return 0
