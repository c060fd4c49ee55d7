"""`python -m fmmm.data {stats,dedup,decontaminate,filter,mix} -i INPUT [-i ...] -o OUT [CONFIG] [k=v ...]`.

INPUT: shard files (.tar, .jsonl), folders (searched recursively), globs, robot dataset folders.
CONFIG: optional YAML file for the command's config (fmmm/data/config.py); k=v override it.
"""

from __future__ import annotations

import argparse
import json
import sys

COMMANDS = {
    "stats": ("StatsConfig", "fmmm.data.mixture", "stats"),
    "dedup": ("DedupConfig", "fmmm.data.dedup", "dedup"),
    "decontaminate": ("DecontaminateConfig", "fmmm.data.decontaminate", "decontaminate"),
    "filter": ("FilterConfig", "fmmm.data.filters", "filter_corpus"),
    "mix": ("MixConfig", "fmmm.data.mixture", "mix"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmmm.data", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("-i", "--input", action="append", required=True, help="shards or folders")
    parser.add_argument("-o", "--output", help="output folder (optional for stats)")
    parser.add_argument("settings", nargs="*", help="[CONFIG.yaml] [key=value ...]")
    args = parser.parse_intermixed_args(argv)

    import importlib

    from fmmm import config as config_module
    from fmmm.data import config as schemas

    schema_name, module_name, function_name = COMMANDS[args.command]
    try:
        path, overrides = config_module.split_cli(args.settings)
        config = config_module.load_config(getattr(schemas, schema_name), path, overrides)
        if args.output is None and args.command != "stats":
            raise ValueError(f"{args.command} needs an output folder: -o DIR")
        function = getattr(importlib.import_module(module_name), function_name)
        report = function(args.input, args.output, config)
    except ValueError as exc:  # ConfigError, ShardError and bad input are ValueErrors
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if "summary" in report:
        print(report["summary"], end="")
    else:
        print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
