"""curation: choose the episodes a generalist agent trains on (Gato's expert-return filter).

    python -m curation select runs/raw --out runs/curated --report
    python -m curation stats runs/curated

    from curation import SelectConfig, select
    selection, dst = select(SelectConfig(src="runs/raw", out="runs/curated", mode="window"))

Modules: windows (the O(N) window arithmetic), select (the rules and the plan), output
(writing a view or a compact copy atomically), report (report.html), stats (per-task table).
"""

from __future__ import annotations

import logging

from curation.output import check_destination, check_not_referenced, write_selection
from curation.select import NEGATIVE_RETURN_RULE, CurationError, SelectConfig, Selection, plan_selection
from shards import Root, read_index, read_manifest

__all__ = ["NEGATIVE_RETURN_RULE", "CurationError", "SelectConfig", "Selection", "plan_selection", "select"]

logger = logging.getLogger(__name__)


def select(config: SelectConfig) -> tuple[Selection, Root]:
    """Run ``python -m curation select``: read SRC's index, decide, write DST atomically."""
    config.validate()
    src = Root.of(config.src)
    dst = check_destination(src, config.out, config.overwrite)
    manifest = read_manifest(src)
    index = read_index(src, dictionary=True)  # strings as dictionaries: fast to read and take
    if config.overwrite:
        check_not_referenced(dst, index)
    selection = plan_selection(index, manifest, config, where=src.uri)
    report = None
    if config.report:
        from curation.report import write_report

        report = write_report
    write_selection(selection, src, manifest, dst, report=report)
    logger.info("kept %d of %d candidate episodes -> %s", selection.keep.sum(), selection.keep.size, dst.uri)
    return selection, dst
