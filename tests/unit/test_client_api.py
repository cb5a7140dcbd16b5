"""The sync and asyncio clients offer the same methods with the same signatures."""

import inspect

import pytest

from std_daq_service.client import AioDaqDataClient, DaqDataClient
from std_daq_service.client.daq_client import CLIENT_METHODS


def test_the_method_table_lists_every_public_method_of_the_sync_client():
    public = {name for name, member in vars(DaqDataClient).items()
              if callable(member) and not name.startswith("_") and name != "close"}
    assert public == set(CLIENT_METHODS)


@pytest.mark.parametrize("name", CLIENT_METHODS)
def test_sync_and_async_signatures_are_equal(name):
    sync, aio = getattr(DaqDataClient, name), getattr(AioDaqDataClient, name)
    assert inspect.signature(aio).parameters == inspect.signature(sync).parameters
    assert inspect.iscoroutinefunction(aio) or inspect.isasyncgenfunction(aio)
