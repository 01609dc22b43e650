"""The environment variables an operator lets an expert read (`expert add --allow-env`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from etr_hub.errors import EtrHubError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_env_names(names: Sequence[str] | None) -> list[str]:
    """The operator's `allow_env` names (the CLI's --allow-env), sorted and unique; ETR_HUB_* are the
    hub's own, never an expert's."""
    from etr_hub.models.refs import HUB_ENV_PREFIX

    names = list(names or [])
    for name in names:
        if not _ENV_NAME.match(name):
            raise EtrHubError(
                f"`allow_env` {name!r} is not an environment variable name",
                "pass the variable's NAME, e.g. `allow_env=ASTRO_API_KEY` (never the key)",
            )
        if name.upper().startswith(HUB_ENV_PREFIX):
            raise EtrHubError(
                f"`allow_env` {name}: {HUB_ENV_PREFIX}* variables are the hub's own secrets"
                " and are never given to an expert",
                "give the expert its own variable, e.g. ASTRO_API_KEY",
            )
    return sorted(set(names))
