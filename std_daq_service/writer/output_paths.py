"""Confine requested output files to the writer's output root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from std_daq_service.protocol import InvalidRequest

PART_SUFFIX = ".part"
"""Files are written as `<output_file>.part` and renamed when closed."""

_NAME_MAX = 255


def confined_path(output_root: Path, output_file: str) -> Path:
    """The absolute path for `output_file` below `output_root`, symlinks resolved.

    Raises:
        InvalidRequest: `..` components, an absolute path outside the root, a symlink that leads out of
            it, an empty or too long name, or a missing folder.
    """
    root = Path(os.path.realpath(output_root))
    requested = PurePosixPath(output_file)
    if ".." in requested.parts:
        raise InvalidRequest(f"output_file {output_file!r}: '..' is not allowed")
    if any(len(part.encode()) > _NAME_MAX for part in requested.parts):
        raise InvalidRequest(f"output_file {output_file!r}: a path component is longer than {_NAME_MAX} bytes")
    candidate = Path(requested) if requested.is_absolute() else root / requested
    resolved = Path(os.path.realpath(candidate))
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidRequest(f"output_file {output_file!r} is outside the output root {root}")
    if resolved.name.endswith(PART_SUFFIX):
        raise InvalidRequest(f"output_file {output_file!r}: names ending in {PART_SUFFIX} are the writer's own")
    if not resolved.parent.is_dir():
        raise InvalidRequest(f"output folder {resolved.parent} does not exist")
    if resolved.is_dir():
        raise InvalidRequest(f"output_file {output_file!r} is a directory")
    return resolved


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
