"""scripts/demo.py keeps the whole demo inside --total-minutes: training gets only what is left."""

from __future__ import annotations

import time


def test_training_is_skipped_when_the_total_budget_leaves_only_evaluation_time(tmp_path, capsys, repo_script):
    demo = repo_script("scripts/demo.py")
    config = demo.DemoConfig(out=str(tmp_path), train_minutes=27, total_minutes=44, eval_minutes=5)
    started = time.perf_counter() - 40 * 60  # collection took 40 minutes: 39 - 40 < 0 left to train
    note = demo._train(config, tmp_path, demo_start=started)
    assert note.startswith("steps 0 -> 0 of ")
    printed = capsys.readouterr().out
    assert "minutes left for training (--total-minutes 44 keeps 5 for evaluation)" in printed
    assert "stopping at step 0/" in printed
    assert not (tmp_path / "train").exists()  # no trainer was started
