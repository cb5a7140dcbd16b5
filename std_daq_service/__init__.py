"""Live data acquisition for PANOSETI: PFF tailing, ZMQ streaming, HDF5 recording."""

__version__ = "0.1.0"
