"""The library's messages name parameters (`tau`, `replace=True`); the CLI shows its flags instead.

A library message quotes a parameter in backticks, alone or with a value: `max_tokens`,
`tau=0.5`, `replace=True`. Here each known parameter becomes the flag that sets it (--max-tokens,
--tau 0.5, --replace); anything else in backticks (`etr-hub expert list`) is left as it is.
"""

from __future__ import annotations

import re

# library parameter -> the flag that sets it, for every parameter a library message names
FLAGS = {
    "allow_env": "--allow-env",
    "batch_size": "--batch-size",
    "bias": "--bias",
    "cooldown_s": "--cooldown-s",
    "data_dir": "--data-dir",
    "device": "--device",
    "dtype": "--dtype",
    "epochs": "--epochs",
    "failures_before_cooldown": "--failures-before-cooldown",
    "fallback": "--fallback",
    "force": "--force",
    "label": "--label",
    "label_field": "--label-field",
    "lr": "--lr",
    "mapping": "--map",
    "max_bundle_mb": "--max-bundle-mb",
    "max_epochs": "--max-epochs",
    "max_false_fire": "--max-false-fire",
    "max_new_tokens": "--max-new-tokens",
    "max_prompt_tokens": "--max-prompt-tokens",
    "max_steal": "--max-steal",
    "max_tokens": "--max-tokens",
    "meta_export": "--meta-export",
    "meta_model": "--meta-model",
    "meta_url": "--meta-url",
    "min_p": "--min-p",
    "no_report": "--no-report",
    "out": "--out",
    "pick": "--pick",
    "plot": "--plot",
    "repetition_penalty": "--repetition-penalty",
    "replace": "--replace",
    "rule": "--rule",
    "size": "--size",
    "target_recall": "--target-recall",
    "tau": "--tau",
    "top_p": "--top-p",
    "version": "--version",
    "weight_decay": "--weight-decay",
}

_PARAMETER = re.compile(r"`([a-z_]+)(?:=([^`]*))?`")


def as_flags(message: str) -> str:
    """`message` with the parameters it names written as the CLI's flags."""

    def flag(m: re.Match[str]) -> str:
        name, value = m.groups()
        if name not in FLAGS:
            return m.group(0)
        return FLAGS[name] if value in (None, "True") else f"{FLAGS[name]} {value}"

    return _PARAMETER.sub(flag, message)
