"""`python -m fmmm.data {stats,dedup,decontaminate,filter,mix} -i INPUT [-i ...] -o OUT [CONFIG] [k=v ...]`.

INPUT: shard files (.tar, .jsonl), folders (searched recursively), globs, robot dataset folders.
CONFIG: optional YAML file for the command's config (fmmm/data/config.py); k=v override it.
"""

from __future__ import annotations

import argparse
import json
import sys

from fmmm.utils.cli import run_main

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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty output folder that holds no earlier fmmm.data output",
    )
    args = parser.parse_intermixed_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    import importlib

    from fmmm import config as config_module
    from fmmm.data import config as schemas
    from fmmm.utils.io import check_output_dir

    schema_name, module_name, function_name = COMMANDS[args.command]
    path, overrides = config_module.split_cli(args.settings)
    config = config_module.load_config(getattr(schemas, schema_name), path, overrides)
    if args.output is None and args.command != "stats":
        raise ValueError(f"{args.command} needs an output folder: -o DIR")
    if args.output is not None:  # an earlier run's work folder or report: a re-run resumes it
        check_output_dir(
            args.output, overwrite=args.overwrite, own_markers=(".work", "report.json")
        )
    function = getattr(importlib.import_module(module_name), function_name)
    report = function(args.input, args.output, config)
    if "summary" in report:
        print(report["summary"], end="")
    else:
        print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
