"""The meta model in an OpenAI-compatible engine (vLLM, SGLang, TGI, llama.cpp's server,
`transformers serve`) serving the checkpoint `etr-hub export meta` wrote.

The router (`etr-hub serve --meta-url`) holds no weights: it sends the conversation to the engine
and reads the text that streams back. An expert token is an ordinary added token of the exported
checkpoint, so it arrives as its text, `<|expert:NAME|>`. Every wait is bounded (connect 5 s,
read `timeout_s`); an engine that does not answer, or answers 4xx/5xx, is one EngineError line.

At start the router checks what it can: the engine answers GET /models and serves `model`; the
export's etr_hub_export.json names the registry's meta fingerprint and, for every expert the
registry would route to, the same name, version and token sha256; and the engine's tokenizer
reads each expert token as one token (a /v1/completions probe of one token, counted from
`usage.prompt_tokens`). An OpenAI-compatible engine cannot say which files it loaded, so the
export folder (`meta_export`) is the router's copy of what the engine serves; its tokenizer
files are all the router reads from it.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etr_hub.errors import EtrHubError
from etr_hub.models.refs import redact_url

EXPORT_FILE = "etr_hub_export.json"  # written by runtime/export.py next to the checkpoint
EXPORT_FORMAT = "etr-hub-meta-export"
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 60.0
SUPPRESS = -100.0  # logit_bias that keeps a token out (OpenAI's lower bound)


class EngineError(EtrHubError):
    """The meta engine failed: the request cannot be answered (HTTP 502 from `etr-hub serve`)."""

    http_status = 502


@dataclass
class Piece:
    """One streamed delta of the engine's answer."""

    text: str
    finish: str | None = None
    completion_tokens: int | None = None  # from the final usage, when the engine sends one


class MetaEngine:
    """An OpenAI-compatible engine serving the exported meta model. Thread-safe (httpx.Client)."""

    def __init__(self, url: str, model: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise EtrHubError(
                f"meta engine URL {url!r} is not an http(s) URL", "pass e.g. `meta_url=http://HOST:8001/v1`"
            )
        if not timeout_s > 0:
            raise EtrHubError(f"meta engine timeout {timeout_s} must be > 0", "pass a number of seconds")
        self.url = url.rstrip("/")
        self.where = f"the meta engine at {redact_url(self.url)}"
        self.timeout_s = float(timeout_s)
        timeout = httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))
        self.client = httpx.Client(timeout=timeout, follow_redirects=False)
        self.model = model or ""

    def close(self) -> None:
        self.client.close()

    # -- start-up checks ------------------------------------------------------------------------
    def check_model(self) -> None:
        """GET /models answers 200 and lists `model` (or exactly one model, which becomes `model`)."""
        data = self._json("GET", "/models")
        listed = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)] if isinstance(data, dict) else []
        if not self.model:
            if len(listed) != 1:
                raise EtrHubError(
                    f"{self.where} serves {len(listed)} models ({', '.join(map(str, listed)) or 'none'})",
                    "name the exported meta model with `meta_model`",
                )
            self.model = str(listed[0])
        elif self.model not in listed and listed:
            raise EtrHubError(
                f"{self.where} does not serve model {self.model!r} (it lists {', '.join(map(str, listed))})",
                "pass the name the engine serves the exported checkpoint under as `meta_model`",
            )

    def check_tokens(self, tokens: list[str]) -> None:
        """The engine's tokenizer reads each expert token as one token (a checkpoint without them
        splits `<|expert:NAME|>` into many): prompt tokens of T+T minus those of T, for T = all of them."""
        if not tokens:
            return
        joined = "".join(tokens)
        once, twice = self._prompt_tokens(joined), self._prompt_tokens(joined + joined)
        if twice - once != len(tokens):
            raise EtrHubError(
                f"{self.where} does not serve the exported expert tokens (model {self.model!r} reads "
                f"{len(tokens)} expert token(s) as {twice - once} tokens)",
                "serve the folder `etr-hub export meta` wrote (re-export after experts changed)",
            )

    def _prompt_tokens(self, prompt: str) -> int:
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
        data = self._json("POST", "/completions", json=body)
        try:
            return int(data["usage"]["prompt_tokens"])
        except (KeyError, TypeError, ValueError):
            raise EtrHubError(
                f"{self.where} does not report usage.prompt_tokens on /v1/completions",
                "use an OpenAI-compatible engine (vLLM, SGLang, TGI, llama.cpp's server, transformers serve)",
            ) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            resp = self.client.request(method, self.url + path, **kwargs)
        except httpx.TimeoutException:
            raise EngineError(
                f"{self.where} did not answer {method} {path} within {self.timeout_s:g} s", "check the engine"
            ) from None
        except httpx.HTTPError as exc:
            raise EngineError(f"{self.where} is unreachable ({type(exc).__name__})", _fix_url()) from None
        if resp.status_code >= 400:
            raise EngineError(f"{self.where} answered {method} {path} with HTTP {resp.status_code}", _fix_url())
        try:
            return resp.json()
        except ValueError:
            raise EngineError(f"{self.where} sent no JSON for {method} {path}", _fix_url()) from None

    # -- generation -----------------------------------------------------------------------------
    def stream(self, path: str, body: dict[str, Any]) -> Generator[Piece]:
        """POST `path` (/chat/completions or /completions) with stream=True; the deltas as Pieces.
        Closing the iterator closes the connection (an engine then stops generating)."""
        import httpx

        body = {**body, "model": self.model, "stream": True}
        try:
            with self.client.stream("POST", self.url + path, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise EngineError(
                        f"{self.where} answered HTTP {resp.status_code}: {resp.text[:200]!r}", "check the engine's log"
                    )
                yield from _events(resp, self.where)
        except httpx.TimeoutException:
            raise EngineError(
                f"{self.where} stopped answering (no data for {self.timeout_s:g} s)", "check the engine"
            ) from None
        except httpx.HTTPError as exc:
            raise EngineError(f"{self.where} failed: {type(exc).__name__}", _fix_url()) from None


def _events(resp: Any, where: str) -> Iterator[Piece]:
    """Server-sent events of a chat or text completion: `data: {json}` lines until `data: [DONE]`."""
    for line in resp.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
            if "error" in event:
                raise EngineError(f"{where} failed mid-answer: {str(event['error'])[:200]}", "check the engine's log")
            usage = event.get("usage") or {}
            choices = event.get("choices") or [{}]
            choice = choices[0]
            text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
        except (ValueError, AttributeError, TypeError, IndexError):
            raise EngineError(f"{where} sent a malformed event: {data[:120]!r}", _fix_url()) from None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        yield Piece(text or "", choice.get("finish_reason"), int(tokens) if isinstance(tokens, int) else None)


def _fix_url() -> str:
    return "start the engine serving the exported checkpoint, or fix `meta_url` (an OpenAI-compatible /v1 base URL)"


def check_export(manifest: dict[str, Any], fingerprint: str, experts: list[tuple[str, str, str]]) -> None:
    """The export matches the registry: its meta fingerprint, and exactly the experts the registry
    would route to, as (name, version, token sha256)."""
    if manifest.get("meta_fingerprint") != fingerprint:
        raise EtrHubError(
            f"the exported checkpoint was made from meta model {str(manifest.get('meta_fingerprint'))[:12]}…, "
            f"the registry's is {fingerprint[:12]}…",
            "re-export with `etr-hub export meta OUT` against this registry and serve that",
        )
    exported = [(e.get("name"), e.get("version"), e.get("token_sha256")) for e in manifest["experts"]]
    if sorted(map(str, exported)) == sorted(map(str, experts)):
        return
    have, want = {e[0]: e for e in exported}, {e[0]: e for e in experts}
    problems = [f"'{n}' is not in the export" for n in want if n not in have]
    problems += [f"'{n}' is exported but not enabled in the registry" for n in have if n not in want]
    problems += [f"'{n}' changed since the export (version or token)" for n in want if n in have and have[n] != want[n]]
    raise EtrHubError(
        "the exported checkpoint's expert tokens do not match the registry: " + "; ".join(problems),
        "re-export with `etr-hub export meta OUT` and serve that (re-export whenever experts change)",
    )


@dataclass
class RouterExport:
    """What a router reads from the export folder: etr_hub_export.json, the tokenizer (with the chat
    template the engine applies), the context length and the recommended sampling. No weights."""

    manifest: dict[str, Any]
    tokenizer: Any
    context: int
    sampling: Any  # generation.modelinfo.SamplingDefaults


def read_router_export(folder: Any) -> RouterExport:
    from types import SimpleNamespace

    from etr_hub.generation.modelinfo import sampling_defaults

    if folder is None:
        raise EtrHubError(
            "a router needs the exported checkpoint's folder (its etr_hub_export.json and tokenizer)",
            "pass `meta_export` (the folder `etr-hub export meta OUT` wrote; the weights need not be there)",
        )
    root = Path(folder).expanduser()
    manifest = read_export_manifest(root)
    try:
        from transformers import AutoTokenizer, GenerationConfig

        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        generation = (
            GenerationConfig.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
            if (root / "generation_config.json").is_file()
            else GenerationConfig()
        )
    except (OSError, ValueError) as exc:
        raise EtrHubError(
            f"cannot read the tokenizer and config of {root}: {str(exc).splitlines()[0][:200]}",
            "pass the whole folder `etr-hub export meta OUT` wrote as `meta_export`",
        ) from None
    context = int(config.get("max_position_embeddings") or 2048)
    sampling = sampling_defaults(SimpleNamespace(generation_config=generation, name_or_path=""))
    return RouterExport(manifest, tokenizer, context, sampling)


def read_export_manifest(folder: Path | str) -> dict[str, Any]:
    """`etr_hub_export.json` of an exported checkpoint (the folder, or the file itself)."""
    path = Path(folder).expanduser()
    path = path / EXPORT_FILE if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EtrHubError(
            f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
            "point to the folder `etr-hub export meta OUT` wrote",
        ) from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or not isinstance(data.get("experts"), list):
        raise EtrHubError(
            f"{path} is not an etr-hub meta export", "point to the folder `etr-hub export meta OUT` wrote"
        )
    return data
