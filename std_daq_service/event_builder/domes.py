"""Which dome each module sits in, from a run's obs_config.json."""

from __future__ import annotations

import json
from pathlib import Path

from std_daq_service.protocol import InvalidRequest


def module_id_of_ip(ip_addr: str) -> int:
    """PANOSETI's module id: the last octet of the module's base IP address >> 2 (192.168.0.12 -> 3)."""
    return int(ip_addr.rsplit(".", 1)[-1]) >> 2


def domes_of_obs_config(path: str | Path) -> dict[int, str]:
    """Module id -> dome name, from the `domes[].modules[].ip_addr` of an obs_config.json.

    Raises:
        InvalidRequest: the file cannot be read or is not an obs_config.
    """
    try:
        config = json.loads(Path(path).read_text())
        return {module_id_of_ip(module["ip_addr"]): dome["name"]
                for dome in config["domes"] for module in dome["modules"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{path}: not a readable obs_config.json with domes[].modules[].ip_addr: {exc}") from exc
