"""Where a dataset lives: a local path or a pyarrow filesystem URI (file://, s3://, gs://).

Every write goes through ``atomic_write``: readers either see the whole file or none of it.
On a local disk that is write-to-temp then rename; object stores make a PUT visible only
once it completes, so there the final key is written directly.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Root:
    """A dataset root resolved to a filesystem and a base path on it."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @classmethod
    def of(cls, root: str | os.PathLike | Root) -> Root:
        if isinstance(root, Root):
            return root
        text = os.fspath(root)
        if "://" in text:
            fs, base = pafs.FileSystem.from_uri(text)
            return cls(fs, base.rstrip("/"), text.rstrip("/"))
        local = os.path.abspath(text)
        return cls(pafs.LocalFileSystem(), local, local)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.base}/{relative}" if relative else self.base

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def size(self, relative: str) -> int:
        return self.fs.get_file_info(self.path(relative)).size or 0

    def makedirs(self, relative: str) -> None:
        self.fs.create_dir(self.path(relative), recursive=True)

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def write_bytes(self, relative: str, data: bytes) -> None:
        with atomic_write(self, relative) as sink:
            sink.write(data)

    def list_files(self, relative: str, suffix: str = "") -> list[str]:
        """Paths relative to the root of the files under ``relative`` (recursive), sorted."""
        if not self.exists(relative):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(relative), recursive=True))
        prefix = self.base + "/"
        return sorted(
            i.path[len(prefix):] for i in infos
            if i.type == pafs.FileType.File and i.path.endswith(suffix) and not _is_temp(i.path)
        )

    def delete(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(relative))


TEMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_write(root: Root, relative: str) -> Iterator[pafs.NativeFile]:
    """Open ``relative`` for writing; it appears under its name only if the block succeeds."""
    parent = relative.rsplit("/", 1)[0] if "/" in relative else ""
    root.makedirs(parent)
    final = root.path(relative)
    if not root.is_local:
        with root.fs.open_output_stream(final) as sink:
            yield sink
        return
    directory, name = os.path.split(final)
    temp = os.path.join(directory, f"{TEMP_MARK}{uuid.uuid4().hex[:8]}-{name}")
    try:
        with root.fs.open_output_stream(temp) as sink:
            yield sink
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)


def _is_temp(path: str) -> bool:
    return os.path.basename(path).startswith(TEMP_MARK)
