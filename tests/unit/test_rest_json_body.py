"""The REST proxy's JSON answers carry whatever the audit trail holds, even what orjson refuses."""

from __future__ import annotations

import json

import numpy as np
import orjson

from std_daq_service.rest import json_body


def test_integers_beyond_64_bits_and_lone_surrogates_are_written_as_text():
    record = json.loads('{"request": {"targets": -1180591620717411303424, "n": 18446744073709551615, '
                        '"name": "a\\ud800b", "ok": [1, true, null, 2.5]}}')
    answer = json.loads(json_body.dumps({"status": "ok", "requests": [record]}))
    assert answer["requests"][0]["request"] == {"targets": "-1180591620717411303424", "n": 18446744073709551615,
                                                "name": "a?b", "ok": [1, True, None, 2.5]}


def test_ordinary_payloads_are_orjsons_bytes():
    payload = {"status": "ok", "image": np.arange(4, dtype=np.uint16), "when": 1.5}
    option = orjson.OPT_SERIALIZE_NUMPY
    assert json_body.dumps(payload, option) == orjson.dumps(payload, default=str, option=option)
