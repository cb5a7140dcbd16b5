"""The PFF file format written by PANOSETI's Hashpipe: names, headers, timestamps, reading, tailing, writing."""

from std_daq_service.pff.data_products import DATA_PRODUCTS, HEADER_END, DataProduct, data_product
from std_daq_service.pff.errors import PffError
from std_daq_service.pff.frame_block import FrameBlock
from std_daq_service.pff.frame_scanner import FrameScanner, ScanStep
from std_daq_service.pff.header import HeaderLayout, HeaderStyle, format_header, parse_header
from std_daq_service.pff.names import (
    DataFileName,
    RunDirName,
    format_data_file_name,
    format_run_dir_name,
    parse_data_file_name,
    parse_run_dir_name,
)
from std_daq_service.pff.reader import PffReader
from std_daq_service.pff.tailer import PffTailer
from std_daq_service.pff.timestamps import WR_INVALID, host_unix_ns, wr_unix_ns
from std_daq_service.pff.writer import PffWriter

__all__ = [
    "DATA_PRODUCTS",
    "DataFileName",
    "DataProduct",
    "FrameBlock",
    "FrameScanner",
    "HEADER_END",
    "HeaderLayout",
    "HeaderStyle",
    "PffError",
    "PffReader",
    "PffTailer",
    "PffWriter",
    "RunDirName",
    "ScanStep",
    "WR_INVALID",
    "data_product",
    "format_data_file_name",
    "format_header",
    "format_run_dir_name",
    "host_unix_ns",
    "parse_data_file_name",
    "parse_header",
    "parse_run_dir_name",
    "wr_unix_ns",
]
