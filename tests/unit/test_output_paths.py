"""Output files confined to the writer's output root; missing folders created inside it."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from std_daq_service.protocol import Busy, InvalidRequest
from std_daq_service.writer.h5_recording import H5Recording
from std_daq_service.writer.output_paths import confined_path, make_folders, move_into_place, part_path


def test_missing_folders_are_created_inside_the_root(tmp_path):
    path = confined_path(tmp_path, "night1/run1/file.h5")
    assert path == tmp_path.resolve() / "night1" / "run1" / "file.h5"
    make_folders(tmp_path, path)
    assert (tmp_path / "night1" / "run1").is_dir() and not path.exists()
    make_folders(tmp_path, path)  # existing folders are fine


def test_an_absolute_path_inside_the_root_gets_its_folders_too(tmp_path):
    path = confined_path(tmp_path, str(tmp_path / "a" / "b.h5"))
    make_folders(tmp_path, path)
    assert (tmp_path / "a").is_dir()


@pytest.mark.parametrize("output_file, reason", [
    ("../x.h5", "'..' is not allowed"),
    ("new/../../x.h5", "'..' is not allowed"),
    ("/etc/new/x.h5", "outside the output root"),
    ("out/new/x.h5", "outside the output root"),  # `out` is a symlink leading out of the root
    ("x" * 239 + ".h5", "the file name is 242 bytes, longer than 241"),
    ("x" * 252 + ".h5", "the file name is 255 bytes, longer than 241"),
    ("d" * 256 + "/x.h5", "a folder name is longer than 255 bytes"),
    ("x.h5.part", "are the writer's own"),
])
def test_bad_output_files_are_refused_and_create_nothing(tmp_path, output_file, reason):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "out").symlink_to(outside)
    with pytest.raises(InvalidRequest, match=reason):
        confined_path(root, output_file)
    assert sorted(p.name for p in root.iterdir()) == ["out"] and not list(outside.iterdir())


def test_a_241_byte_file_name_is_accepted(tmp_path):
    name = "x" * 238 + ".h5"
    path = confined_path(tmp_path, name)
    part_path(path).write_bytes(b"")  # the longest name the writer uses for it


def test_a_file_where_a_folder_should_be_is_bad_input(tmp_path):
    (tmp_path / "night1").write_bytes(b"")
    path = confined_path(tmp_path, "night1/run1.h5")
    with pytest.raises(InvalidRequest, match="night1 is not a folder"):
        make_folders(tmp_path, path)


def test_a_folder_that_becomes_a_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    path = confined_path(root, "night1/run1.h5")
    (root / "night1").symlink_to(outside)  # swapped in after validation
    with pytest.raises(InvalidRequest, match="leads outside the output root"):
        make_folders(root, path)


def test_writer_processes_sharing_a_root_use_different_part_files(tmp_path):
    other = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from std_daq_service.writer.output_paths import part_path; "
                            "print(part_path(Path(sys.argv[1])))", str(tmp_path / "x.h5")],
                           capture_output=True, text=True, check=True).stdout.strip()
    mine = part_path(tmp_path / "x.h5")
    assert mine.name.startswith("x.h5.") and mine.name.endswith(".part") and other.endswith(".part")
    assert str(mine) != other


def test_without_overwrite_a_file_that_appears_before_the_rename_is_kept(tmp_path):
    path = tmp_path / "x.h5"
    part = part_path(path)
    part.write_bytes(b"mine")
    path.write_bytes(b"theirs")  # appeared after the writer checked that the name was free
    with pytest.raises(Busy, match="appeared while it was written"):
        move_into_place(part, path, overwrite=False)
    assert path.read_bytes() == b"theirs" and part.read_bytes() == b"mine"
    move_into_place(part, path, overwrite=True)
    assert path.read_bytes() == b"mine" and not part.exists()


def race(path: Path, parts: dict[str, Path]) -> dict[str, str]:
    """Each writer moves its part to `path` without overwrite at the same moment; who won, who was refused."""
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(len(parts))

    def commit(writer: str, part: Path) -> None:
        barrier.wait()
        try:
            move_into_place(part, path, overwrite=False)
            outcomes[writer] = "won"
        except Busy:
            outcomes[writer] = "refused"

    threads = [threading.Thread(target=commit, args=item) for item in parts.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_two_writers_racing_for_one_name_without_overwrite_never_clobber(tmp_path):
    for round_ in range(200):
        path = tmp_path / f"race{round_}.h5"
        parts = {writer: tmp_path / f"race{round_}.h5.{writer}.part" for writer in "ab"}
        for writer, part in parts.items():
            part.write_bytes(writer.encode())
        outcomes = race(path, parts)
        assert sorted(outcomes.values()) == ["refused", "won"], outcomes
        winner = next(w for w, o in outcomes.items() if o == "won")
        assert path.read_bytes() == winner.encode(), "the file is the winner's, whole"


def test_a_recording_whose_name_is_taken_before_its_commit_fails_and_leaves_the_other_file(tmp_path):
    path = tmp_path / "x.h5"
    recording = H5Recording(path, "none", {}, overwrite=False)
    with recording:
        path.write_bytes(b"theirs")
        with pytest.raises(Busy):
            recording.commit(True, "done")
    assert path.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["x.h5"]
