"""Confine requested output files to the writer's output root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from std_daq_service.protocol import InvalidRequest, StorageError

PART_SUFFIX = ".part"
"""Files are written as `<output_file>.part` and renamed when closed."""

_NAME_MAX = 255
"""Longest name of a folder or file (bytes), as on ext4, XFS and most file systems."""
_FILE_NAME_MAX = _NAME_MAX - len(PART_SUFFIX.encode())
"""Longest output file name: it is written as `<name>.part` first."""


def confined_path(output_root: Path, output_file: str) -> Path:
    """The absolute path for `output_file` below `output_root`, symlinks resolved.

    Folders that do not exist yet are allowed (`make_folders` creates them).

    Raises:
        InvalidRequest: `..` components, an absolute path outside the root, a symlink that leads out of
            it, an empty name, a folder name longer than 255 bytes or a file name longer than 250 bytes.
    """
    root = Path(os.path.realpath(output_root))
    requested = PurePosixPath(output_file)
    if ".." in requested.parts:
        raise InvalidRequest(f"output_file {output_file!r}: '..' is not allowed")
    if any(len(part.encode()) > _NAME_MAX for part in requested.parent.parts):
        raise InvalidRequest(f"output_file {output_file!r}: a folder name is longer than {_NAME_MAX} bytes")
    if len(requested.name.encode()) > _FILE_NAME_MAX:
        raise InvalidRequest(f"output_file {output_file!r}: the file name is {len(requested.name.encode())} bytes, "
                             f"longer than {_FILE_NAME_MAX} (it is written as <name>{PART_SUFFIX} first, and names "
                             f"have at most {_NAME_MAX} bytes)")
    candidate = Path(requested) if requested.is_absolute() else root / requested
    resolved = Path(os.path.realpath(candidate))
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidRequest(f"output_file {output_file!r} is outside the output root {root}")
    if resolved.name.endswith(PART_SUFFIX):
        raise InvalidRequest(f"output_file {output_file!r}: names ending in {PART_SUFFIX} are the writer's own")
    if resolved.is_dir():
        raise InvalidRequest(f"output_file {output_file!r} is a directory")
    return resolved


def make_folders(output_root: Path, path: Path) -> None:
    """Create the missing folders of `path` (from `confined_path`) one by one, each checked to stay in the root.

    Folders created for a write that then fails stay.

    Raises:
        InvalidRequest: a file is where a folder should be, or a folder became a symlink out of the root.
        StorageError: a folder cannot be created (permission denied, read-only, disk full).
    """
    root = Path(os.path.realpath(output_root))
    folder = root
    for name in path.parent.relative_to(root).parts:
        folder = folder / name
        try:
            folder.mkdir(exist_ok=True)
        except FileExistsError as exc:
            raise InvalidRequest(f"output folder {folder} is not a folder") from exc
        except OSError as exc:
            raise StorageError(f"cannot create output folder {folder}: {exc.strerror}") from exc
        if not Path(os.path.realpath(folder)).is_relative_to(root):
            raise InvalidRequest(f"output folder {folder} leads outside the output root {root}")


def part_path(path: Path) -> Path:
    return path.with_name(path.name + PART_SUFFIX)


def stale_parts(output_root: Path, limit: int = 100) -> list[Path]:
    """Temporary files left by a writer that died mid-write (at most `limit`)."""
    found = []
    for path in Path(output_root).rglob(f"*{PART_SUFFIX}"):
        found.append(path)
        if len(found) >= limit:
            break
    return found
