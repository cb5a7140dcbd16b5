"""The sync and asyncio clients offer the same methods with the same signatures, in panoseti_grpc's order."""

import asyncio
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
    if name.startswith("stream_"):  # an async iterator that may also be awaited, as panoseti's README does both
        assert inspect.signature(aio).return_annotation == "AsyncStream"
    else:
        assert inspect.iscoroutinefunction(aio)


@pytest.mark.parametrize("client", [DaqDataClient, AioDaqDataClient])
def test_panoseti_positional_order_binds_the_config_and_the_timeout(client):
    hosts, config = ["lick.daq1.hp_io_agent"], {"simulate_daq": True}
    assert inspect.signature(client.init_sim).bind(None, hosts, config).arguments["hp_io_cfg"] is config
    bound = inspect.signature(client.init_hp_io).bind(None, hosts, config, 10.0).arguments
    assert bound["hp_io_cfg"] is config and bound["timeout"] == 10.0
    bound = inspect.signature(client.init_sim).bind(None, hosts, config, timeout=5.0).arguments
    assert bound["timeout"] == 5.0
    assert inspect.signature(client.init_sim).return_annotation == "bool"
    assert inspect.signature(client.init_hp_io).return_annotation == "bool"


def test_the_async_client_takes_panoseti_stop_event():
    assert inspect.signature(AioDaqDataClient).bind({}, {}, stop_event=asyncio.Event())

