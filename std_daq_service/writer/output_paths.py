"""Confine requested output files to the writer's output root."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path, PurePosixPath

from std_daq_service.protocol import Busy, InvalidRequest, StorageError

PART_SUFFIX = ".part"
"""Files are written as `<output_file>.<writer tag>.part` and renamed when closed."""
_TAG_CHARS = 8

_NAME_MAX = 255
"""Longest name of a folder or file (bytes), as on ext4, XFS and most file systems."""
_FILE_NAME_MAX = _NAME_MAX - len(PART_SUFFIX.encode()) - 1 - _TAG_CHARS
"""Longest output file name: it is written as `<name>.<tag>.part` first."""


def confined_path(output_root: Path, output_file: str) -> Path:
    """The absolute path for `output_file` below `output_root`, symlinks resolved.

    Folders that do not exist yet are allowed (`make_folders` creates them).

    Raises:
        InvalidRequest: `..` components, an absolute path outside the root, a symlink that leads out of
            it, an empty name, a folder name longer than 255 bytes or a file name longer than 241 bytes.
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


def writer_tag() -> str:
    """Eight hex digits naming this writer process (host and PID): writers sharing an output root, on one host or
    several, never write the same `.part` file."""
    return hashlib.sha256(f"{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()[:_TAG_CHARS]


def part_path(path: Path) -> Path:
    """`<name>.<writer tag>.part`: this process's temporary file for `path`."""
    return path.with_name(f"{path.name}.{writer_tag()}{PART_SUFFIX}")


def move_into_place(part: Path, path: Path, overwrite: bool) -> None:
    """Rename `part` to `path`; unless `overwrite`, never replace a file there, even one that appeared just now.

    Without overwrite the file is hard-linked to `path` (which fails if anything is there, atomically) and `part`
    is unlinked.

    Raises:
        Busy: `path` exists and `overwrite` is false (`part` is left in place).
        OSError: the rename or link failed otherwise.
    """
    if overwrite:
        os.replace(part, path)
        return
    try:
        os.link(part, path, follow_symlinks=False)
    except FileExistsError:
        raise Busy(f"{path} appeared while it was written; set overwrite=true to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        _rename_noreplace(part, path)  # a file system without hard links
        return
    part.unlink()


def _rename_noreplace(part: Path, path: Path) -> None:
    """renameat2(RENAME_NOREPLACE) through libc (Linux 3.15+, glibc 2.28+)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_noreplace = -100, 1
    if libc.renameat2(at_fdcwd, os.fsencode(part), at_fdcwd, os.fsencode(path), rename_noreplace) != 0:
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise Busy(f"{path} appeared while it was written; set overwrite=true to replace it")
        raise OSError(code, os.strerror(code), str(path))


def stale_parts(output_root: Path, limit: int = 100) -> list[Path]:
    """Temporary files left by a writer that died mid-write (at most `limit`)."""
    found = []
    for path in Path(output_root).rglob(f"*{PART_SUFFIX}"):
        found.append(path)
        if len(found) >= limit:
            break
    return found
