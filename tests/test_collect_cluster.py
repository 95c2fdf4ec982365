"""ray_cluster.yaml passes Ray's own cluster-launcher validation (offline: no cloud calls)."""

from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "ray_cluster.yaml"


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    prepared = prepare_config(config)  # fills Ray's AWS defaults, as `ray up` does
    validate_config(prepared)  # Ray's JSON schema + its own consistency checks
    types = prepared["available_node_types"]
    assert prepared["provider"]["type"] == "aws"
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu_workers = [name for name, t in types.items() if name != prepared["head_node_type"] and t not in gpu]
    assert gpu and cpu_workers and all(types[n]["max_workers"] > types[n]["min_workers"] for n in cpu_workers)
    assert "~/gatoforge" in prepared["file_mounts"]
    setup = "\n".join(prepared["setup_commands"])
    assert "requirements/constraints.txt" in setup and "-e ~/gatoforge" in setup


def test_a_broken_cluster_yaml_is_rejected():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["cpu_rollout"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
