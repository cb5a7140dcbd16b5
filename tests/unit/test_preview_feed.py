"""The live page's stream views stay small: ten minutes of pulse-height event maxima at the Lick rate."""

from __future__ import annotations

import tracemalloc

from conftest import SAMPLE_PH256_M1

from std_daq_service.pff import PffReader
from std_daq_service.protocol import decode_frames, encode_frames
from std_daq_service.rest.preview_feed import PH_WINDOWS_S, StreamView

PER_BATCH = 100


def ph256_batch():
    with PffReader(SAMPLE_PH256_M1) as reader:
        block = reader.block(0, PER_BATCH)
    return decode_frames(encode_frames(
        source="a.b.hp_io_agent", origin="file", module_id=1, dp="ph256", shape=(16, 16), run="obs_x",
        file=SAMPLE_PH256_M1.name, seqno=0, frame_number=block.frame_numbers, seq=block.frame_numbers,
        wr_timestamp_ns=block.wr_timestamp_ns, host_timestamp_ns=block.host_timestamp_ns, pff_fields=block.fields,
        image_bytes=block.image_bytes))


def test_a_pulse_height_view_keeps_its_event_maxima_in_a_few_bytes_each_and_for_ten_minutes_only():
    view, batch, batches = StreamView("a.b.hp_io_agent", 1, "ph256"), ph256_batch(), 1000
    view.add(batch, 0.0)  # the first frame's image copies, not what grows
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, batches):
            view.add(batch, i * 0.1)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    events = (batches - 1) * PER_BATCH
    assert kept / events < 16, f"{kept / events:.0f} bytes per event (a 1 kHz stream keeps 600 000 of them)"
    assert sum(view.distribution(batches * 0.1)["windows"][str(PH_WINDOWS_S[-1])]) == events + PER_BATCH
    view.add(batch, PH_WINDOWS_S[-1] + 50.05)
    assert sum(view.distribution(PH_WINDOWS_S[-1] + 50.05)["windows"][str(PH_WINDOWS_S[-1])]) == 500 * PER_BATCH
