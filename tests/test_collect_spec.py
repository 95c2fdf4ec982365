"""Dataset spec parsing: defaults, globs, and every problem reported at once with its YAML path."""

from __future__ import annotations

import textwrap

import pytest

from collectors.spec import SpecError, load_spec, parse_spec
from collectors.units import plan_units

KNOWN = ["babyai/GoToLocal", "babyai/GoToRedBall", "metaworld/reach-v3", "metaworld/push-v3", "dmc/cartpole-balance"]


def known() -> list[str]:
    return list(KNOWN)


def test_every_problem_is_reported_with_its_yaml_path(tmp_path):
    data = {
        "name": "",
        "root": "out",
        "colour": "red",
        "defaults": {"num_envs": 0},
        "tasks": [
            {"id": "babyai/GoToLocal", "rollout_episodes": -3},
            {"id": "metaworld/nope-v3"},
            {"id": "dmc/cartpole-balance", "expert": {"kind": "train"}, "training": {"budget": "huge", "runs": 0}},
            {"id": "babyai/GoToRedBall", "expert": {"kind": "bot"}},
            {"id": "metaworld/*", "expert": {"kind": "checkpoint"}},
        ],
    }
    with pytest.raises(SpecError) as caught:
        parse_spec(data, source="spec.yaml", list_tasks=known)
    problems = caught.value.problems
    text = str(caught.value)
    assert text.startswith("spec.yaml: ")
    expected = [
        "colour: unknown key",
        "name: expected a non-empty string",
        "defaults.num_envs: expected an integer >= 1, got 0",
        "tasks[0].rollout_episodes: expected an integer >= 0, got -3",
        "tasks[1].id: 'metaworld/nope-v3' matches no registered task",
        "tasks[2].training.budget: expected one of ['smoke', 'full'], got 'huge'",
        "tasks[2].training.runs: expected an integer >= 1, got 0",
        "tasks[3].expert.kind: expected one of ['random', 'scripted', 'train', 'checkpoint'], got 'bot'",
        "tasks[4].expert.source: kind checkpoint needs a source",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert all(prefix in text for prefix in expected)


def test_globs_expand_and_defaults_merge_in_order(tmp_path):
    spec_file = tmp_path / "specs" / "s.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(textwrap.dedent("""
        name: s
        root: ../out
        seed: 7
        defaults: {random_episodes: 5, num_envs: 3}
        domains:
          metaworld: {num_envs: 2, cut_after_success: 10}
        tasks:
          - id: metaworld/*
            rollout_episodes: 30
            episodes_per_unit: 25
          - id: babyai/GoToLocal
            rollout_episodes: 10
            num_envs: 5
            seed: 99
    """))
    spec = load_spec(spec_file, list_tasks=known)
    assert spec.root == str(tmp_path / "out")  # relative roots resolve against the spec file, not the cwd
    plans = {p.task: p for p in spec.tasks}
    assert sorted(plans) == ["babyai/GoToLocal", "metaworld/push-v3", "metaworld/reach-v3"]
    reach = plans["metaworld/reach-v3"]
    assert (reach.num_envs, reach.cut_after_success, reach.random_episodes, reach.seed) == (2, 10, 5, 7)
    assert reach.expert.kind == "scripted"  # built-in metaworld default
    local = plans["babyai/GoToLocal"]
    assert (local.num_envs, local.seed, local.episodes_per_unit) == (5, 99, 200)

    units = plan_units(spec)
    reach_units = [u for u in units if u.task == "metaworld/reach-v3"]
    assert [(u.name, u.episodes, u.first_index) for u in reach_units] == [
        ("scripted-0000", 25, 0), ("scripted-0001", 5, 25), ("random-0000", 5, 0)]
    assert reach_units[0].cut_after_success == 10 and reach_units[2].cut_after_success is None
    again = plan_units(load_spec(spec_file, list_tasks=known))
    assert [(u.unit_id, u.seed) for u in again] == [(u.unit_id, u.seed) for u in units]
    assert len({u.seed for u in units}) == len(units)
    assert load_spec(spec_file, list_tasks=known, root_override="s3://bucket/ds").root == "s3://bucket/ds"


def test_training_units_come_first_and_rollouts_depend_on_them():
    spec = parse_spec({"name": "t", "root": "/tmp/x", "tasks": [
        {"id": "babyai/GoToLocal", "rollout_episodes": 4},
        {"id": "dmc/cartpole-balance", "expert": {"kind": "train"}, "rollout_episodes": 20, "episodes_per_unit": 10,
         "training": {"runs": 2, "num_gpus": 1}},
    ]}, list_tasks=known)
    units = plan_units(spec)
    assert [u.kind for u in units[:2]] == ["training", "training"]
    assert units[1].num_gpus == 1
    rollouts = [u for u in units if u.kind == "rollout"]
    assert len(rollouts) == 2 and all(u.depends_on == "dmc/cartpole-balance/train-001" for u in rollouts)
    assert rollouts[0].expert == "trained:dmc/cartpole-balance/train-001"


def test_duplicate_tasks_and_bad_yaml_are_errors(tmp_path):
    with pytest.raises(SpecError, match=r"tasks\[1\].id: task 'babyai/GoToLocal' is already listed by tasks\[0\]"):
        parse_spec({"name": "d", "root": "/tmp/d", "tasks": ["babyai/*", "babyai/GoToLocal"]}, list_tasks=known)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad, list_tasks=known)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml", list_tasks=known)


def test_shipped_specs_validate_against_the_real_registry():
    pytest.importorskip("experts.registry")
    from pathlib import Path

    from experts.registry import list_tasks

    datasets = Path(__file__).resolve().parent.parent / "datasets"
    quick = load_spec(datasets / "quickstart.yaml", list_tasks=list_tasks)
    assert {p.domain for p in quick.tasks} == {"babyai", "metaworld", "dmc", "atari", "procgen"}
    full = load_spec(datasets / "gato-control.yaml", list_tasks=list_tasks)
    assert len(full.tasks) == len(list_tasks())
    assert full.root.startswith("s3://")
    assert all(p.training.budget == "full" for p in full.tasks if p.expert.kind == "train")


def test_noisy_episodes_plan_after_the_clean_ones_and_bad_noise_settings_are_named():
    spec = parse_spec({"name": "dart", "root": "/tmp/x", "tasks": [
        {"id": "metaworld/reach-v3", "rollout_episodes": 50, "noisy_episodes": 60, "action_noise": 0.2,
         "episodes_per_unit": 25}]}, list_tasks=known)
    units = [u for u in plan_units(spec) if u.kind != "random"]
    assert [u.name for u in units] == ["scripted-0000", "scripted-0001", "noisy-0000", "noisy-0001", "noisy-0002"]
    assert [u.action_noise for u in units] == [None, None, 0.2, 0.2, 0.2]
    assert {u.run_id for u in units[2:]} == {"noisy"} and units[-1].episodes == 10
    assert len({u.seed for u in units}) == len(units)  # noisy chunks do not replay the clean chunks' seeds
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "bad", "root": "/tmp/x", "tasks": [
            {"id": "metaworld/reach-v3", "noisy_episodes": 5},
            {"id": "babyai/GoToLocal", "noisy_episodes": 5, "action_noise": 1.5},
            {"id": "dmc/cartpole-balance", "noisy_episodes": 5, "action_noise": -1}]}, list_tasks=known)
    text = str(caught.value)
    assert "tasks[0].noisy_episodes: 5 noisy episodes need action_noise" in text
    assert "tasks[1].action_noise: 1.5 for babyai/GoToLocal's discrete actions; expected the probability" in text
    assert "tasks[2].action_noise: expected a number in (0, 2]" in text
