"""``dynamicid-rt cache``: list what the engine caches hold, and prune them (see :mod:`dynamicid_rt.export.cache_admin`)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from dynamicid_rt.errors import DynamicIDError


def register(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser("cache", help="list what the engine caches hold, or prune them",
                                   description="Without a verb: list each cached engine per model, precision, LoRA set "
                                   "and backend, with its size and last use.")
    parser.add_argument("--onnx-cache", type=Path, default=None, metavar="DIR", help="the cache to look at (default: the user cache)")
    verbs = parser.add_subparsers(dest="cache_command")
    prune = verbs.add_parser("prune", help="remove what was not used for a while, or the least recently used beyond a size")
    prune.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="remove what was unused this long")
    prune.add_argument("--max-size", type=float, default=None, metavar="GB", help="then the least recently used until this size is left")
    parser.set_defaults(handler=run_cache)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def listing(root: Path) -> list[str]:
    from dynamicid_rt.export.cache_admin import scan

    items = scan(root)
    now = time.time()
    lines = [f"{'model':40s} {'engine':14s} {'prec':5s} {'LoRA set':17s} {'backend':12s} {'size':>9s}  last use"]
    for item in sorted(items, key=lambda i: (i.model, i.engine, i.precision, i.lora, i.backend)):
        model = item.model if len(item.model) <= 40 else "..." + item.model[-37:]
        lines.append(f"{model:40s} {item.engine:14s} {item.precision:5s} {item.lora or '-':17s} {item.backend:12s} "
                     f"{item.size / 1e6:7.1f} MB  {_ago(now - item.last_used)}")
    lines.append(f"{len(items)} items, {sum(i.size for i in items) / 1e9:.2f} GB in {root}")
    return lines


def run_cache(args: argparse.Namespace) -> int:
    from dynamicid_rt.export.cache import engines_root
    from dynamicid_rt.export.cache_admin import prune

    root = args.onnx_cache or engines_root()
    if args.cache_command == "prune":
        if args.older_than is None and args.max_size is None:
            raise DynamicIDError("cache prune: give --older-than DAYS, --max-size GB or both")
        if (args.older_than is not None and not args.older_than >= 0) or (args.max_size is not None and not args.max_size >= 0):
            raise DynamicIDError("cache prune: --older-than and --max-size must be 0 or more")
        gone = prune(root, args.older_than * 86400 if args.older_than is not None else None,
                     int(args.max_size * 1e9) if args.max_size is not None else None)
        print(f"removed {len(gone)} items, {sum(i.size for i in gone) / 1e9:.2f} GB")
    print("\n".join(listing(root)))
    return 0
