"""Coincidence event builder: pulse-height hits of several modules and domes within a window of WR time."""
