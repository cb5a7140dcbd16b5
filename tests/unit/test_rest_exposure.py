"""Which REST configs expose the proxy without a token, and the token comparison."""

from __future__ import annotations

import pytest

from std_daq_service.config import RestConfig, exposed_without_token
from std_daq_service.rest.app import token_matches


@pytest.mark.parametrize("config, exposed", [
    ({}, False),
    ({"host": "127.0.0.1"}, False),
    ({"host": "127.0.0.2"}, False),
    ({"host": "::1"}, False),
    ({"host": "localhost"}, False),
    ({"host": "0.0.0.0"}, True),
    ({"host": "::"}, True),
    ({"host": "10.0.0.5"}, True),
    ({"host": "daq-head.lick"}, True),
    ({"host": "0.0.0.0", "token": "t"}, False),
    ({"host": "0.0.0.0", "allow_unauthenticated_remote": True}, False),
])
def test_a_proxy_beyond_loopback_needs_a_token_or_an_explicit_allowance(config, exposed):
    assert exposed_without_token(RestConfig(**config)) is exposed


def test_the_token_must_match_exactly():
    assert token_matches("Bearer s3cret", "s3cret")
    assert not token_matches("Bearer s3creT", "s3cret")
    assert not token_matches("Bearer s3cret ", "s3cret")
    assert not token_matches("", "s3cret")
    assert not token_matches("Bearer sécret", "s3cret")
