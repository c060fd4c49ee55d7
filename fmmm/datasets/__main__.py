"""`python -m fmmm.datasets {export-lerobot,import-lerobot,info} ...`: convert and inspect datasets.

A conversion never writes over a non-empty DESTINATION unless --overwrite is given (the folder is
then replaced in one rename, once the new one is complete), and never over its SOURCE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fmmm.datasets.lerobot import CODEBASE_VERSION, VERSIONS
from fmmm.utils.cli import run_main

OVERWRITE_HELP = "replace a non-empty DESTINATION (atomically, once the new one is complete)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmmm.datasets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-lerobot", help="fmmm dataset -> LeRobot v3.0 folder")
    export.add_argument("source", type=Path)
    export.add_argument("destination", type=Path)
    export.add_argument(
        "--version",
        choices=VERSIONS,
        default=CODEBASE_VERSION,
        help="LeRobot dataset format: v3.0 for lerobot >= 0.4 (default), v2.1 for older",
    )
    export.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    imported = commands.add_parser(
        "import-lerobot", help="LeRobot v2.x or v3.x folder -> fmmm dataset"
    )
    imported.add_argument("source", type=Path)
    imported.add_argument("destination", type=Path)
    imported.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    info = commands.add_parser("info", help="print a dataset's meta/info.json summary")
    info.add_argument("dataset", type=Path)
    args = parser.parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    from fmmm.datasets.lerobot import export_lerobot, import_lerobot
    from fmmm.datasets.robot import RobotDataset

    if args.command == "export-lerobot":
        path = export_lerobot(
            args.source, args.destination, version=args.version, overwrite=args.overwrite
        )
        print(path)
    elif args.command == "import-lerobot":
        print(import_lerobot(args.source, args.destination, overwrite=args.overwrite))
    else:
        dataset = RobotDataset(args.dataset)
        summary = {k: v for k, v in dataset.info.items() if k != "features"}
        print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
