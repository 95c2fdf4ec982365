"""Live progress: workers report to a Ray actor, the driver draws a rich table from it.

Workers send each unit's running totals (not increments), so a retried unit replaces the
counts of its killed attempt instead of adding to them.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


RATE_WINDOW_S = 5.0


class ProgressBoard:
    """Per-unit totals and the worker pid running each unit (a Ray actor in the driver)."""

    def __init__(self) -> None:
        self.units: dict[str, dict[str, Any]] = {}

    def report(self, unit_id: str, task: str, pid: int, episodes: int, steps: int, done: bool) -> None:
        unit = self.units.setdefault(unit_id, {"task": task, "attempts": 0, "pid": None, "done": False})
        if unit["pid"] != pid and not done:
            unit["attempts"] += 1
        unit.update(pid=pid, episodes=episodes, steps=steps, done=unit["done"] or done)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.units


class ProgressView:
    """A rich progress display: one line per task (units done, episodes, env steps, steps/s)."""

    def __init__(self, unit_counts: dict[str, int], enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<24}"), BarColumn(bar_width=12), MofNCompleteColumn(),
            TextColumn("units {task.fields[episodes]:>6} eps {task.fields[steps]:>9} steps {task.fields[rate]:>7}/s"),
            TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled, refresh_per_second=4,
        )
        self.rows = {
            task: self.progress.add_task(task, total=count, episodes=0, steps=0, rate="-")
            for task, count in unit_counts.items()
        }
        self.total = self.progress.add_task("all tasks", total=sum(unit_counts.values()), episodes=0, steps=0, rate="-")
        self._history: deque[tuple[float, dict[str, int]]] = deque()

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, snapshot: dict[str, dict[str, Any]], committed: dict[str, int],
               previous: dict[str, dict[str, int]]) -> dict[str, int]:
        """Redraw from a board snapshot; ``previous`` holds totals of units committed in earlier
        runs. Returns per-task steps collected in this run."""
        episodes: dict[str, int] = defaultdict(int)
        steps: dict[str, int] = defaultdict(int)
        for task, counts in previous.items():
            episodes[task] += counts["episodes"]
            steps[task] += counts["steps"]
        fresh: dict[str, int] = defaultdict(int)
        for unit in snapshot.values():
            episodes[unit["task"]] += unit.get("episodes", 0)
            steps[unit["task"]] += unit.get("steps", 0)
            fresh[unit["task"]] += unit.get("steps", 0)
        now = time.monotonic()
        self._history.append((now, dict(fresh)))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW_S:
            self._history.popleft()  # steps/s over the last RATE_WINDOW_S seconds
        then, old = self._history[0]
        elapsed = max(now - then, 1e-6)
        for task, row in self.rows.items():
            self.progress.update(row, completed=committed.get(task, 0), episodes=episodes[task], steps=steps[task],
                                 rate=f"{(fresh[task] - old.get(task, 0)) / elapsed:,.0f}")
        self.progress.update(self.total, completed=sum(committed.values()), episodes=sum(episodes.values()),
                             steps=sum(steps.values()),
                             rate=f"{(sum(fresh.values()) - sum(old.values())) / elapsed:,.0f}")
        return dict(fresh)
