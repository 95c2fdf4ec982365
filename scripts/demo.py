"""`make demo`: the whole pipeline on datasets/quickstart.yaml, stage by stage, resumable.

    python scripts/demo.py [--out runs/demo]

Each stage runs only if its package is installed in this checkout; a missing stage is
reported as not built yet, never faked. Every stage resumes on a rerun.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "demo"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = [
        ("collect", "collectors.run_all",
         [str(REPO / "collectors" / "run_all.py"), "--spec", str(REPO / "datasets" / "quickstart.yaml"), "--out", str(out / "data")]),
        ("validate", "shards", ["-m", "shards", "validate", str(out / "data")]),
    ]
    for name, module, command in stages:
        if importlib.util.find_spec(module) is None or not _entry_exists(module):
            print(f"[demo] {name}: not built yet ({module} is missing); stopping here")
            return 0
        print(f"[demo] {name}: {' '.join(command)}", flush=True)
        start = time.time()
        result = subprocess.run([sys.executable, *command])
        if result.returncode != 0:
            print(f"[demo] {name} failed (exit {result.returncode})")
            return result.returncode
        print(f"[demo] {name} done in {time.time() - start:.0f} s")
    print(f"[demo] results under {out}")
    return 0


def _entry_exists(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is not None and Path(spec.origin).exists()


if __name__ == "__main__":
    sys.exit(main())
