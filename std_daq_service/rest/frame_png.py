"""PNG images of frames for the live page: pixels between colour limits through a viridis-like colour map."""

from __future__ import annotations

import io
import threading

import numpy as np
from PIL import Image

_VIRIDIS_ANCHORS = np.array([(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                             (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=float)
COLOUR_MAP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_VIRIDIS_ANCHORS)), channel)
                       for channel in _VIRIDIS_ANCHORS.T], axis=1).round().astype(np.uint8)
"""256 RGB colours from dark blue to yellow (matplotlib's viridis, sampled at nine points)."""


def frame_png(image: np.ndarray, low: float, high: float) -> bytes:
    """The image as an RGB PNG, one PNG pixel per detector pixel (the page scales it up without smoothing)."""
    scaled = np.clip((image.astype(np.float32) - low) * (255.0 / max(high - low, 1e-9)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(COLOUR_MAP[scaled], "RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


class PngCache:
    """The PNG of each stream's latest frame, encoded once per frame whatever the number of viewers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple, tuple[int, bytes]] = {}

    def get(self, key: tuple, seq: int, image: np.ndarray, limits: tuple[float, float]) -> bytes:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] == seq:
                return cached[1]
        png = frame_png(image, *limits)
        with self._lock:
            self._cache[key] = (seq, png)
        return png
