"""The runtime: routed generation over the registry's meta model and experts.

    from etr_hub.runtime import Hub
    hub = Hub.open()
    for event in hub.chat([{"role": "user", "content": "Why do stars twinkle?"}], stream=True):
        ...

`Hub` (and everything that needs torch) is imported lazily, so `import etr_hub.runtime` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etr_hub.runtime.types import (
    ChatResult,
    Done,
    Event,
    ExpertInfo,
    ExpertScore,
    Explanation,
    RouteSwitch,
    RouteWarning,
    Switch,
    TextDelta,
    WordScore,
)

if TYPE_CHECKING:
    from etr_hub.runtime.hub import Hub

__all__ = [
    "ChatResult",
    "Done",
    "Event",
    "ExpertInfo",
    "ExpertScore",
    "Explanation",
    "Hub",
    "RouteSwitch",
    "RouteWarning",
    "Switch",
    "TextDelta",
    "WordScore",
]


def __getattr__(name: str):
    if name == "Hub":
        from etr_hub.runtime.hub import Hub

        return Hub
    raise AttributeError(name)
