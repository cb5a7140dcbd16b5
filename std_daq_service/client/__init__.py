"""Python client of the PANOSETI DAQ: panoseti_grpc's `DaqDataClient` / `AioDaqDataClient` API.

Light to import (numpy, pyzmq, pika, redis; no h5py or flask), so stream viewers can use it anywhere.
"""

from std_daq_service.client.aio_client import AioDaqDataClient
from std_daq_service.client.daq_client import DaqDataClient
from std_daq_service.client.pano_image import pano_images

__all__ = ["AioDaqDataClient", "DaqDataClient", "pano_images"]
