"""Output files confined to the writer's output root; missing folders created inside it."""

from __future__ import annotations

import pytest

from std_daq_service.protocol import InvalidRequest
from std_daq_service.writer.output_paths import confined_path, make_folders


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
    ("x" * 248 + ".h5", "the file name is 251 bytes, longer than 250"),
    ("x" * 252 + ".h5", "the file name is 255 bytes, longer than 250"),
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


def test_a_250_byte_file_name_is_accepted(tmp_path):
    name = "x" * 247 + ".h5"
    path = confined_path(tmp_path, name)
    path.with_name(name + ".part").write_bytes(b"")  # the longest name the writer uses for it


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
