from datetime import datetime, timezone

import pytest

from std_daq_service.pff import (
    PffError,
    format_data_file_name,
    format_run_dir_name,
    parse_data_file_name,
    parse_run_dir_name,
)

WHEN = datetime(2024, 7, 25, 4, 34, 46, tzinfo=timezone.utc)


@pytest.mark.parametrize("sep", [":", "_", "-"])
def test_data_file_names_parse_with_every_time_separator(sep):
    name = parse_data_file_name(f"start_2024-07-25T04{sep}34{sep}46Z.dp_img16.bpp_2.module_1.seqno_3.pff")
    assert (name.start, name.dp, name.bytes_per_pixel, name.module_id, name.seqno) == (WHEN, "img16", 2, 1, 3)


def test_archived_name_with_extra_suffix_parses():
    name = parse_data_file_name("start_2024-07-25T04_34_46Z.dp_ph256.bpp_2.module_3.seqno_0.debug_TRUNCATED.pff")
    assert (name.dp, name.module_id, name.seqno) == ("ph256", 3, 0)


@pytest.mark.parametrize(
    "bad",
    ["hk.pff", "start_2024-07-25T04:34:46Z.dp_img32.bpp_2.module_1.seqno_0.pff", "start_x.dp_img16.pff", ""],
)
def test_bad_data_file_names_are_rejected_with_the_pattern(bad):
    with pytest.raises(PffError, match="start_<UTC>|unknown data product"):
        parse_data_file_name(bad)


def test_run_dir_names_parse_and_format_round_trip():
    run = parse_run_dir_name("/data/module_1/obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd/")
    assert (run.site, run.runtype) == ("Lick", "sci-data")
    again = parse_run_dir_name(format_run_dir_name(run.site, run.start, run.runtype))
    assert again == run


def test_formatted_data_file_name_is_hashpipes():
    assert format_data_file_name(WHEN, "img8", 7, 2) == "start_2024-07-25T04:34:46Z.dp_img8.bpp_1.module_7.seqno_2.pff"
    assert parse_data_file_name(format_data_file_name(WHEN, "ph1024", 7, 2)).bytes_per_pixel == 2
