"""`ModelRef`: where a model comes from (a local folder, a pinned Hub revision, a GGUF file, ...).

Stored inside bundle manifests and the registry, so it is a strict pydantic model. This module
must stay importable without torch: the CLI parses references before anything heavy loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from etr_hub.errors import ModelLoadError
from etr_hub.plugins import plugin_backend_kinds

Kind = Literal["hf", "local", "gguf", "peft", "embedded", "openai"]
BUILTIN_KINDS: tuple[str, ...] = get_args(Kind)

DEFAULT_EMBEDDED = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {DEFAULT_EMBEDDED: DEFAULT_EMBEDDED, "smollm2": DEFAULT_EMBEDDED, "default": DEFAULT_EMBEDDED}

# Fields each kind requires / may carry; anything else set is a mistake worth reporting.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "hf": ("repo_id", "revision"),
    "local": ("path",),
    "gguf": ("path",),
    "peft": ("path",),
    "embedded": ("name",),
    "openai": ("url", "model"),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "gguf": ("gguf_file",),
    "peft": ("base",),
    "openai": ("timeout_s", "api_key_env"),
}
# A backend plug-in's own kind (plugins.py): a model its backend knows by name, maybe at a URL.
_PLUGIN_REQUIRED, _PLUGIN_OPTIONAL = ("model",), ("url", "timeout_s", "api_key_env")
_FIELDS = ("repo_id", "revision", "path", "gguf_file", "base", "name", "url", "model", "timeout_s", "api_key_env")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HUB_ENV_PREFIX = "ETR_HUB_"  # the hub's own settings and secrets: never handed to an expert

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HF_FIX = "write hf:ORG/NAME@COMMIT with the full 40-character commit hash (a branch name is not pinned)"
_FORMS = (
    "use embedded:smollm2-135m-instruct, hf:ORG/NAME@COMMIT, openai:URL#MODEL, a model folder, "
    "a .gguf file or a PEFT adapter folder"
)


class ModelRef(BaseModel):
    """A reference to a model. `base=None` on a peft ref means "the meta model"."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: str  # one of BUILTIN_KINDS, or the kind of an installed backend plug-in
    repo_id: Annotated[str, Field(max_length=256)] | None = None  # hf
    revision: Annotated[str, Field(max_length=64)] | None = None  # hf: a pinned 40-hex commit
    path: Annotated[str, Field(max_length=4096)] | None = None  # local dir / gguf file (or dir) / peft adapter dir
    gguf_file: Annotated[str, Field(max_length=255)] | None = None  # gguf: file name inside `path` when `path` is a dir
    base: ModelRef | None = None  # peft: the base model; None = the meta model
    name: Annotated[str, Field(max_length=64)] | None = None  # embedded
    url: Annotated[str, Field(max_length=2048)] | None = None  # openai, plug-ins: base URL, e.g. http://host:8000/v1
    model: Annotated[str, Field(max_length=512)] | None = None  # openai, plug-ins: the model name its backend knows
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] | None = None  # openai
    api_key_env: str | None = None  # openai: NAME of the environment variable holding the key (never the key)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        """A built-in kind or an installed plug-in's; anything else fails as an unknown Literal would."""
        known = [*BUILTIN_KINDS, *(plugin_backend_kinds() if kind not in BUILTIN_KINDS else ())]
        if kind not in known:
            expected = ", ".join(map(repr, known[:-1])) + f" or {known[-1]!r}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return kind

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> ModelRef:
        required, optional = _fields(self.kind)
        allowed = set(required) | set(optional)
        for field in _FIELDS:
            value = getattr(self, field)
            if field in required and value in (None, ""):
                raise ValueError(f"a {self.kind} reference needs '{field}'")
            if field not in allowed and value is not None:
                raise ValueError(f"'{field}' does not apply to a {self.kind} reference")
        if self.kind == "hf" and not _SHA_RE.match(self.revision or ""):
            raise ValueError(f"revision '{self.revision}' is not a 40-character commit hash")
        if self.kind == "embedded" and self.name not in EMBEDDED_ALIASES.values():
            raise ValueError(f"unknown embedded model '{self.name}' (known: {DEFAULT_EMBEDDED})")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url '{redact_url(self.url)}' must start with http:// or https://")
        if self.url is not None and has_userinfo(self.url):
            raise ValueError(
                f"url '{redact_url(self.url)}' carries credentials (user:password@); a URL is shown and logged — "
                "remove them and name an environment variable in api_key_env instead"
            )
        if self.api_key_env is not None and not _ENV_NAME_RE.match(self.api_key_env):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable "
                "(letters, digits and _, e.g. ASTRO_API_KEY), never the key"
            )
        if self.api_key_env is not None and self.api_key_env.upper().startswith(HUB_ENV_PREFIX):
            raise ValueError(
                f"api_key_env may not name {self.api_key_env}: {HUB_ENV_PREFIX}* variables are the hub's own secrets"
            )
        return self

    def env_names(self) -> list[str]:
        """Environment variables this reference (or its base) wants read."""
        names = [self.api_key_env] if self.api_key_env else []
        return names + (self.base.env_names() if self.base is not None else [])

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse a CLI string; raises ModelLoadError with a one-line fix."""
        text = text.strip()
        if not text:
            raise ModelLoadError("empty model reference", _FORMS)
        prefix, sep, rest = text.partition(":")
        if sep and prefix in _PARSERS:
            return _PARSERS[prefix](rest)
        if text in EMBEDDED_ALIASES:
            return _parse_embedded(text)
        return _parse_path(text)

    def display(self) -> str:
        """A short human string, e.g. `hf:org/name@1a2b3c4d5e6f` or `peft:/x/adapter (on meta)`."""
        if self.kind == "hf":
            return f"hf:{self.repo_id}@{(self.revision or '')[:12]}"
        if self.kind == "embedded":
            return f"embedded:{self.name}"
        if self.model is not None:  # openai, and plug-in kinds
            return f"{self.kind}:{self.url}#{self.model}" if self.url else f"{self.kind}:{self.model}"
        if self.kind == "gguf" and self.gguf_file:
            return f"gguf:{Path(self.path or '') / self.gguf_file}"
        if self.kind == "peft":
            on = "meta" if self.base is None else self.base.display()
            return f"peft:{self.path} (on {on})"
        return f"{self.kind}:{self.path}"

    def __str__(self) -> str:
        return self.display()

    def resolved(self, root: Path | str) -> ModelRef:
        """This ref with relative paths made absolute against `root` (e.g. a bundle folder)."""
        update: dict = {}
        if self.path is not None and not Path(self.path).is_absolute():
            update["path"] = str(Path(root) / self.path)
        if self.base is not None:
            update["base"] = self.base.resolved(root)
        return self.model_copy(update=update) if update else self


def _fields(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) fields of a `kind` reference."""
    if kind in _REQUIRED:
        return _REQUIRED[kind], _OPTIONAL.get(kind, ())
    return _PLUGIN_REQUIRED, _PLUGIN_OPTIONAL


def _parse_embedded(rest: str) -> ModelRef:
    name = EMBEDDED_ALIASES.get(rest.strip().lower())
    if name is None:
        raise ModelLoadError(f"unknown embedded model '{rest}'", f"use embedded:{DEFAULT_EMBEDDED}")
    return ModelRef(kind="embedded", name=name)


def _parse_hf(rest: str) -> ModelRef:
    repo_id, sep, revision = rest.partition("@")
    if not _REPO_RE.match(repo_id):
        raise ModelLoadError(f"'{repo_id}' is not a Hugging Face repo id (ORG/NAME)", _HF_FIX)
    if not sep or not revision:
        raise ModelLoadError(f"hf:{repo_id} has no revision", _HF_FIX)
    if not _SHA_RE.match(revision.lower()):
        raise ModelLoadError(f"revision '{revision}' of hf:{repo_id} is not a full commit hash", _HF_FIX)
    return ModelRef(kind="hf", repo_id=repo_id, revision=revision.lower())


def has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return "@" in url


def redact_url(url: str) -> str:
    """`url` without a user:password@ part (for display: never print a credential)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_ref(ref: dict) -> dict:
    """A stored reference (a dict, maybe from an older registry) with credentials removed from URLs."""
    out = dict(ref)
    if isinstance(out.get("url"), str):
        out["url"] = redact_url(out["url"])
    if isinstance(out.get("base"), dict):
        out["base"] = redact_ref(out["base"])
    return out


def _parse_openai(rest: str) -> ModelRef:
    url, _, model = rest.partition("#")
    fix = "write openai:http://HOST:PORT/v1#MODEL-NAME"
    if not url.startswith(("http://", "https://")):
        raise ModelLoadError(f"'{redact_url(url)}' is not an http(s) URL", fix)
    if has_userinfo(url):
        raise ModelLoadError(
            f"'{redact_url(url)}' carries credentials (user:password@)",
            "remove them; put a key in an environment variable and name it in the bundle's api_key_env",
        )
    if not model:
        raise ModelLoadError(f"openai:{url} names no model", fix)
    return ModelRef(kind="openai", url=url.rstrip("/"), model=model)


def _parse_peft(rest: str) -> ModelRef:
    path = _existing(rest)
    config = path / "adapter_config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"{path} is not a PEFT adapter (no adapter_config.json)",
            "point at the folder written by PeftModel.save_pretrained",
        )
    return ModelRef(kind="peft", path=str(path), base=_adapter_base(config))


def _adapter_base(config: Path) -> ModelRef | None:
    """The adapter's base when it names a local model folder; else None (= the meta model)."""
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config}: {exc}", "fix or re-save the adapter") from None
    if base and (Path(base).expanduser() / "config.json").is_file():
        return ModelRef(kind="local", path=str(Path(base).expanduser().resolve()))
    return None


def _parse_gguf(rest: str) -> ModelRef:
    path = _existing(rest)
    if path.is_file():
        return ModelRef(kind="gguf", path=str(path))
    found = sorted(p.name for p in path.glob("*.gguf"))
    if len(found) != 1:
        raise ModelLoadError(f"{path} holds {len(found)} .gguf files", "name the .gguf file itself")
    return ModelRef(kind="gguf", path=str(path), gguf_file=found[0])


def _parse_local(rest: str) -> ModelRef:
    path = _existing(rest)
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} has no config.json", "point at a transformers model folder (save_pretrained output)"
        )
    return ModelRef(kind="local", path=str(path))


def _parse_path(text: str) -> ModelRef:
    """A bare path: guess the kind from what is there."""
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelLoadError(f"unknown model reference '{text}' (no such file or folder)", _FORMS)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return _parse_peft(text)
    if path.is_dir() and (path / "config.json").is_file():
        return _parse_local(text)
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        return _parse_gguf(text)
    raise ModelLoadError(f"cannot tell what kind of model {path} is", _FORMS)


def _existing(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelLoadError(f"no such file or folder: {text}", "check the path")
    return path.resolve()  # absolute, so the ref still works from another working directory


_PARSERS = {
    "embedded": _parse_embedded,
    "hf": _parse_hf,
    "openai": _parse_openai,
    "peft": _parse_peft,
    "gguf": _parse_gguf,
    "local": _parse_local,
}
