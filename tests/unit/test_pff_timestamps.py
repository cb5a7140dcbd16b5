import numpy as np

from std_daq_service.pff import WR_INVALID, FrameBlock, data_product, format_header, host_unix_ns, wr_unix_ns
from std_daq_service.pff.timestamps import pkt_tai


def test_readme_example_header_gives_exact_nanoseconds():
    assert wr_unix_ns(1721882092, 529, 779007488) == 1721882092_779007488


def test_pkt_tai_of_clocks_in_step_is_what_the_readme_example_header_holds():
    assert pkt_tai(1721882092) == 529
    assert wr_unix_ns(1721882092, pkt_tai(1721882092), 5) == 1721882092_000000005


def test_host_clock_a_second_ahead_or_behind_is_corrected():
    tv_sec = 1721882092
    tai_low = (tv_sec + 37) % 1024
    assert wr_unix_ns(tv_sec, tai_low, 5) == tv_sec * 10**9 + 5
    assert wr_unix_ns(tv_sec, (tai_low - 1) % 1024, 5) == (tv_sec - 1) * 10**9 + 5
    assert wr_unix_ns(tv_sec, (tai_low + 1) % 1024, 5) == (tv_sec + 1) * 10**9 + 5


def test_clocks_two_seconds_apart_give_invalid_not_an_exception():
    tv_sec = 1721882092
    assert wr_unix_ns(tv_sec, (tv_sec + 37 + 2) % 1024, 0) == WR_INVALID
    out = wr_unix_ns(np.array([tv_sec, tv_sec]), np.array([(tv_sec + 37) % 1024, 0]), np.array([1, 1]))
    assert out.tolist() == [tv_sec * 10**9 + 1, WR_INVALID]


def test_host_time_is_integer_ns():
    assert host_unix_ns(1721882092, 691344) == 1721882092_691344000


def test_module_image_with_missing_quabo_0_is_timed_by_the_next_quabo():
    dp = data_product("img16")
    quabo = {"pkt_num": 1, "pkt_tai": 529, "pkt_nsec": 779007488, "tv_sec": 1721882092, "tv_usec": 1}
    header = format_header({"quabo_1": quabo, "quabo_2": quabo})
    raw = np.frombuffer(header + bytes(dp.image_size), dtype=np.uint8)[None, :]
    block = FrameBlock(dp, raw)
    assert block.wr_timestamp_ns.tolist() == [1721882092_779007488]
