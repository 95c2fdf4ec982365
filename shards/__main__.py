"""The shard format's command line.

    python -m shards synth /tmp/synth --tasks 4 --episodes 40
    python -m shards info /tmp/synth [--json]
    python -m shards validate /tmp/synth
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Union

import tyro

from shards.console import print_table
from shards.info import task_summary
from shards.manifest import ManifestError
from shards.reader import Dataset, ShardError
from shards.synth import SynthConfig, synth_dataset
from shards.validate import validate


@dataclass
class InfoCommand:
    """Print a per-task table: episodes, steps, mean and max return, bytes on disk."""

    root: tyro.conf.Positional[str]
    """dataset root (local path or URI)"""
    json: bool = False
    """print the table as JSON"""


@dataclass
class ValidateCommand:
    """Exit 0 if the dataset is consistent; otherwise list every problem and exit 1."""

    root: tyro.conf.Positional[str]
    json: bool = False
    """print the problems as JSON"""


@dataclass
class SynthCommand(SynthConfig):
    """Write a valid synthetic dataset with every modality."""

    root: tyro.conf.Positional[str] = ""


Command = Union[
    Annotated[InfoCommand, tyro.conf.subcommand("info")],
    Annotated[ValidateCommand, tyro.conf.subcommand("validate")],
    Annotated[SynthCommand, tyro.conf.subcommand("synth")],
]


def main(argv: list[str] | None = None) -> int:
    command = tyro.cli(Command, args=argv)
    try:
        return run(command)
    except (ShardError, ManifestError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(command) -> int:
    if isinstance(command, InfoCommand):
        dataset = Dataset(command.root)
        print_table(task_summary(dataset), title=f"{command.root}", as_json=command.json)
        return 0
    if isinstance(command, ValidateCommand):
        problems = validate(command.root)
        if command.json:
            print_table([{"problem": p} for p in problems], as_json=True, extra={"ok": not problems})
        elif problems:
            print(f"{command.root}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"- {problem}")
        else:
            print(f"{command.root}: ok")
        return 1 if problems else 0
    if not command.root:
        raise ValueError("synth needs a ROOT to write to")
    synth_dataset(command.root, command)
    print(f"wrote a synthetic dataset to {command.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
