"""The curation command line.

    python -m curation select runs/raw --out runs/curated --report
    python -m curation select runs/raw --out runs/best --mode window --window 100 --group run
    python -m curation stats runs/curated [--json]

Bad input prints one line, ``error: ...``, and exits with code 2; SRC is never modified.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Union

import tyro

from curation.select import SelectConfig
from curation.stats import StatsConfig

Command = Union[
    Annotated[SelectConfig, tyro.conf.subcommand("select")],
    Annotated[StatsConfig, tyro.conf.subcommand("stats")],
]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    command = tyro.cli(Command, args=argv, prog="python -m curation")
    from shards import ManifestError, ShardError

    try:
        return run(command)
    except (ShardError, ManifestError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(command: SelectConfig | StatsConfig) -> int:
    from shards import Dataset
    from shards.console import print_table

    if isinstance(command, StatsConfig):
        from curation.stats import stats_extra, task_stats

        dataset = Dataset(command.root)
        print_table(task_stats(dataset), title=command.root, as_json=command.json, extra=stats_extra(dataset))
        return 0
    from curation import select

    selection, dst = select(command)
    rows = selection.task_rows()
    extra = {"out": dst.uri, "episodes_kept": int(selection.keep.sum()), "episodes_candidates": int(selection.keep.size),
             "view": not command.materialize}
    if command.report:
        extra["report"] = dst.path("report.html")
    print_table(rows, title=f"{command.src} -> {command.out} ({command.mode})", as_json=command.json, extra=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
