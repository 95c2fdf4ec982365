"""shards: the on-disk format every GatoForge stage shares (format version 1).

Public API (see docs/format.md for the files themselves):

    from shards import Episode, Dataset, Manifest, TaskSpec, ModalitySpec
    from shards import StepFileWriter, write_dataset, write_index, index_table, validate
"""

from shards.episode import Episode
from shards.format import (
    ACT_CONTINUOUS,
    ACT_DISCRETE,
    FORMAT_VERSION,
    INDEX_FILE,
    INDEX_SCHEMA,
    MANIFEST_FILE,
    OBS_CONTINUOUS,
    OBS_DISCRETE,
    OBS_IMAGE,
    OBS_TEXT,
    SOURCES,
    domain_of,
    episode_id_for,
    step_schema,
)
from shards.manifest import Manifest, ManifestError, ModalitySpec, TaskSpec, read_manifest, write_manifest
from shards.reader import Dataset, ShardError, read_index
from shards.storage import Root, atomic_write
from shards.validate import validate
from shards.writer import StepFileWriter, index_table, write_dataset, write_index

__all__ = [
    "ACT_CONTINUOUS", "ACT_DISCRETE", "FORMAT_VERSION", "INDEX_FILE", "INDEX_SCHEMA", "MANIFEST_FILE",
    "OBS_CONTINUOUS", "OBS_DISCRETE", "OBS_IMAGE", "OBS_TEXT", "SOURCES", "Dataset", "Episode",
    "Manifest", "ManifestError", "ModalitySpec", "Root", "ShardError", "StepFileWriter", "TaskSpec",
    "atomic_write", "domain_of", "episode_id_for", "index_table", "read_index", "read_manifest",
    "step_schema", "validate", "write_dataset", "write_index", "write_manifest",
]
