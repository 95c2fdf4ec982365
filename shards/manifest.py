"""dataset.json: what a dataset holds, how each task's data was made, and its lineage."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from shards.format import FORMAT_VERSION, MANIFEST_FILE, MODALITY_TYPES, OBS_IMAGE
from shards.storage import Root


class ManifestError(ValueError):
    """dataset.json is missing, unreadable, or lacks a required field."""


@dataclass
class ModalitySpec:
    """Shape and range of one modality column. ``n`` is the number of discrete values."""

    shape: list[int]
    dtype: str
    low: float | list[float] | None = None
    high: float | list[float] | None = None
    n: int | None = None


@dataclass
class TaskSpec:
    """One task: its environment, its spaces, who produced the data, reference returns."""

    domain: str
    env_id: str
    env_version: str = ""
    observation: dict[str, ModalitySpec] = field(default_factory=dict)
    action: dict[str, ModalitySpec] = field(default_factory=dict)
    expert: dict[str, Any] = field(default_factory=dict)
    expert_return: float | None = None
    random_return: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return [*self.observation, *self.action]

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        spec = self.observation.get(OBS_IMAGE)
        return None if spec is None else tuple(spec.shape)


@dataclass
class Manifest:
    name: str
    tasks: dict[str, TaskSpec]
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    software: dict[str, str] = field(default_factory=lambda: software_versions())
    lineage: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_FILE) -> Manifest:
        problems = manifest_problems(data, where)
        if problems:
            raise ManifestError("; ".join(problems))
        tasks = {name: _task_from_dict(spec) for name, spec in data["tasks"].items()}
        return cls(
            name=data["name"], tasks=tasks, format_version=data["format_version"],
            created=data["created"], software=dict(data.get("software", {})),
            lineage=data.get("lineage"), extra=dict(data.get("extra", {})),
        )


REQUIRED_TOP = ("format_version", "name", "created", "tasks")
REQUIRED_TASK = ("domain", "env_id", "observation", "action")
REQUIRED_MODALITY = ("shape", "dtype")


def manifest_problems(data: Any, where: str = MANIFEST_FILE) -> list[str]:
    """Every problem with a parsed dataset.json, each naming the field and what was expected."""
    if not isinstance(data, dict):
        return [f"{where}: expected a JSON object, got {type(data).__name__}"]
    problems = [f"{where}: missing required field '{key}'" for key in REQUIRED_TOP if key not in data]
    version = data.get("format_version")
    if "format_version" in data and version != FORMAT_VERSION:
        problems.append(f"{where}: format_version={version!r}, this GatoForge reads version {FORMAT_VERSION}")
    tasks = data.get("tasks", {})
    if not isinstance(tasks, dict):
        return problems + [f"{where}: 'tasks' must be an object mapping task id to its spec"]
    for task, spec in tasks.items():
        if not isinstance(spec, dict):
            problems.append(f"{where}: tasks.{task} must be an object")
            continue
        problems += [f"{where}: tasks.{task} missing required field '{k}'" for k in REQUIRED_TASK if k not in spec]
        for part in ("observation", "action"):
            for column, mod in (spec.get(part) or {}).items():
                if column not in MODALITY_TYPES:
                    problems.append(f"{where}: tasks.{task}.{part}.{column} is not a known column {list(MODALITY_TYPES)}")
                elif not isinstance(mod, dict) or any(k not in mod for k in REQUIRED_MODALITY):
                    problems.append(f"{where}: tasks.{task}.{part}.{column} needs 'shape' and 'dtype'")
    return problems


def read_manifest(root: str | Root) -> Manifest:
    root = Root.of(root)
    where = root.path(MANIFEST_FILE)
    if not root.exists(MANIFEST_FILE):
        raise ManifestError(f"{where}: not found (is {root.uri} a GatoForge dataset root?)")
    try:
        data = json.loads(root.read_bytes(MANIFEST_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{where}: not valid JSON ({error})") from None
    return Manifest.from_dict(data, where)


def write_manifest(root: str | Root, manifest: Manifest) -> None:
    Root.of(root).write_bytes(MANIFEST_FILE, manifest.to_json().encode())


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape the data, recorded in every manifest."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("gatoforge", "numpy", "pyarrow", "gymnasium", "ale-py", "dm-control", "metaworld",
                    "minigrid", "procgen2", "stable-baselines3", "sample-factory", "torch", "ray"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _task_from_dict(spec: dict[str, Any]) -> TaskSpec:
    def modalities(part: dict[str, Any] | None) -> dict[str, ModalitySpec]:
        return {k: ModalitySpec(**v) for k, v in (part or {}).items()}

    return TaskSpec(
        domain=spec["domain"], env_id=spec["env_id"], env_version=spec.get("env_version", ""),
        observation=modalities(spec["observation"]), action=modalities(spec["action"]),
        expert=dict(spec.get("expert", {})), expert_return=spec.get("expert_return"),
        random_return=spec.get("random_return"), extra=dict(spec.get("extra", {})),
    )
