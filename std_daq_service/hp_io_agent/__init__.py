"""The node agent: finds Hashpipe runs, tails their PFF files and publishes every frame over ZMQ."""
