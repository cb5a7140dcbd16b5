"""HDF5 writer agent: subscribes to agents' frame streams, keeps a ring buffer, records selected frames to HDF5."""
