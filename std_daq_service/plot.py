"""Live plots of PanoImage streams (matplotlib): a frame viewer and pulse-height distributions.

Both take the dicts `DaqDataClient.stream_images` yields (`update(image)`), redraw on `draw()`, and work in a
window or headless (`save(path)`).
"""

from __future__ import annotations

import collections
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from std_daq_service.protocol import frame_time_ns

_RECENT_FRAMES = 50
PH_WINDOWS_S = (10, 60, 600)


def _figure(headless: bool, **kwargs):
    import matplotlib

    if headless:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(**kwargs)


def _time_text(image: dict[str, Any]) -> str:
    ns = frame_time_ns(image["wr_timestamp_ns"], image["host_timestamp_ns"])
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%H:%M:%S.%f")[:-3]


class FrameViewer:
    """One row per module: pulse-height image left, movie image right; colour limits from recent percentiles."""

    def __init__(self, headless: bool = False):
        self.plt, self.figure = _figure(headless, figsize=(8, 4))
        self.latest: dict[tuple[int, str], dict[str, Any]] = {}
        self.recent: dict[tuple[int, str], collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=_RECENT_FRAMES))

    def update(self, image: dict[str, Any]) -> None:
        kind = "movie" if image["type"] == "MOVIE" else "pulse_height"
        key = (image["module_id"], kind)
        self.latest[key] = image
        self.recent[key].append(image["image_array"])

    @property
    def complete(self) -> bool:
        """Every module seen has a pulse-height and a movie image."""
        modules = {module_id for module_id, _ in self.latest}
        return bool(modules) and all((m, k) in self.latest for m in modules for k in ("pulse_height", "movie"))

    def draw(self) -> None:
        self.figure.clear()
        modules = sorted({module_id for module_id, _ in self.latest})
        if not modules:
            self.figure.text(0.5, 0.5, "waiting for frames", ha="center", va="center")
            return
        self.figure.set_size_inches(8, 3.6 * len(modules))
        for row, module_id in enumerate(modules):
            for col, kind in enumerate(("pulse_height", "movie")):
                axes = self.figure.add_subplot(len(modules), 2, row * 2 + col + 1)
                image = self.latest.get((module_id, kind))
                if image is None:
                    axes.set_title(f"module {module_id} {kind.replace('_', '-')}: none", fontsize=9)
                    axes.axis("off")
                    continue
                low, high = np.percentile(np.stack(self.recent[(module_id, kind)]), [1, 99])
                shown = axes.imshow(image["image_array"], vmin=low, vmax=max(high, low + 1), cmap="viridis")
                self.figure.colorbar(shown, ax=axes, fraction=0.046)
                axes.set_title(f"module {module_id} {image['dp']} {_time_text(image)} UTC\n"
                               f"frame {image['frame_number']}", fontsize=9)
                axes.set_xticks([])
                axes.set_yticks([])
        self.figure.tight_layout()

    def save(self, path: str) -> None:
        self.draw()
        self.figure.savefig(path, dpi=80)


class PulseHeightDistribution:
    """Per module, the distribution of each pulse-height event's maximum pixel over sliding windows."""

    def __init__(self, windows_s: tuple[int, ...] = PH_WINDOWS_S, headless: bool = False):
        self.windows_s = windows_s
        self.plt, self.figure = _figure(headless, figsize=(8, 4))
        self.events: dict[int, collections.deque] = collections.defaultdict(collections.deque)

    def update(self, image: dict[str, Any], now: float | None = None) -> None:
        if image["type"] != "PULSE_HEIGHT":
            return
        now = time.monotonic() if now is None else now
        events = self.events[image["module_id"]]
        events.append((now, int(np.max(image["image_array"]))))
        while events and now - events[0][0] > max(self.windows_s):
            events.popleft()

    @property
    def complete(self) -> bool:
        """Some module has pulse-height events to show."""
        return bool(self.events)

    def draw(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.figure.clear()
        modules = sorted(self.events)
        if not modules:
            self.figure.text(0.5, 0.5, "waiting for pulse-height events", ha="center", va="center")
            return
        self.figure.set_size_inches(8, 3 * len(modules))
        for row, module_id in enumerate(modules):
            axes = self.figure.add_subplot(len(modules), 1, row + 1)
            stamps = np.array([t for t, _ in self.events[module_id]])
            maxima = np.array([m for _, m in self.events[module_id]])
            bins = np.linspace(maxima.min(), maxima.max() + 1, 40) if len(maxima) else 10
            for window in self.windows_s:
                selected = maxima[now - stamps <= window]
                if len(selected):
                    axes.hist(selected, bins=bins, histtype="step", label=f"last {window} s ({len(selected)})")
            axes.set_title(f"module {module_id}: max pixel per pulse-height event", fontsize=9)
            axes.set_xlabel("max pixel (ADC)")
            axes.set_ylabel("events")
            axes.legend(fontsize=8)
        self.figure.tight_layout()

    def save(self, path: str) -> None:
        self.draw()
        self.figure.savefig(path, dpi=80)
