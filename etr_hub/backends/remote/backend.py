"""Remote experts over HTTP: the templated prefix goes out as text, the continuation streams back.

The endpoint's own chat template is unknown, so the conversation is rendered in the meta
model's template (a remote expert is normally a served sibling of the meta model). Connect and
read timeouts bound every wait; connection failures and 429/5xx answers are retried with
backoff before any text arrived (after that a retry would repeat text, so it is a failure).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from etr_hub.backends.base import (
    Chunk,
    ExpertBackend,
    ExpertError,
    ExpertSpec,
    GenSettings,
    Handoff,
    render_prompt_text,
)
from etr_hub.models.refs import HUB_ENV_PREFIX, redact_url

DEFAULT_READ_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0  # the health probe after a cool-down (backends/health.py): one try, no retries
RETRIES = 2
BACKOFF_S = 0.25  # then doubled per retry
MAX_STOPS = 4  # the OpenAI API accepts at most four stop strings


class RemoteBackend(ExpertBackend):
    ref_kinds: ClassVar[tuple[str, ...]] = ("openai",)

    def __init__(self, spec: ExpertSpec, meta: Any):
        super().__init__(spec, meta)
        self.client: Any = None
        self.base_url = (spec.ref.url or "").rstrip("/")
        read = spec.ref.timeout_s or DEFAULT_READ_TIMEOUT_S
        self.read_timeout = float(read)
        self.connect_timeout = min(CONNECT_TIMEOUT_S, self.read_timeout)

    def load(self) -> None:
        """Open a client and check the endpoint answers (any non-5xx reply to GET /models)."""
        import httpx

        timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout)
        # no redirects: the key must not follow one to another host
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, headers=self._auth_headers())
        try:
            resp = self._with_retries(
                lambda: self.client.get(f"{self.base_url}/models", timeout=min(HEALTH_TIMEOUT_S, self.read_timeout))
            )
            if resp.status_code in (401, 403):
                raise ExpertError(
                    f"{self._where()} refused {self._credentials()} (HTTP {resp.status_code})", self._key_fix()
                )
        except ExpertError:
            self.unload()
            raise

    def probe(self) -> None:
        """One short GET /models, no retries: does the endpoint answer again? Raises ExpertError if not."""
        import httpx

        try:
            resp = httpx.get(
                f"{self.base_url}/models",
                headers=self._auth_headers(),
                timeout=min(PROBE_TIMEOUT_S, self.read_timeout),
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            raise ExpertError(f"{self._where()} did not answer the probe ({type(exc).__name__})") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ExpertError(f"{self._where()} answered the probe with HTTP {resp.status_code}")

    def _auth_headers(self) -> dict[str, str]:
        name = self.spec.ref.api_key_env
        if not name:
            return {}
        if name not in self.spec.allowed_env or name.upper().startswith(
            HUB_ENV_PREFIX
        ):  # the operator decides what it may read
            raise ExpertError(
                f"{self._where()} asks for ${name}, which the operator did not allow it to read",
                "if you trust the endpoint with it, re-add the bundle with "
                f"`etr-hub expert add BUNDLE --replace --allow-env {name}`",
            )
        key = os.environ.get(name, "").strip()
        if not key:
            raise ExpertError(
                f"{self._where()} needs an API key in ${name}, which is not set",
                f"export {name}=… in the hub's environment",
            )
        return {"Authorization": f"Bearer {key}"}

    def _credentials(self) -> str:
        name = self.spec.ref.api_key_env
        return f"the API key in ${name}" if name else "the request without an API key"

    def _key_fix(self) -> str:
        name = self.spec.ref.api_key_env
        if name:
            return f"check the key in ${name}"
        return (
            'the endpoint wants a key: set "api_key_env": "NAME" on the expert reference and export NAME=… for the hub'
        )

    def unload(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _where(self) -> str:
        return f"remote expert '{self.spec.name}' at {redact_url(self.base_url)}"

    def _with_retries(self, call):
        import httpx

        delay = BACKOFF_S
        for attempt in range(RETRIES + 1):
            try:
                resp = call()
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                problem = f"{self._where()} is unreachable ({type(exc).__name__}: {exc})"
            except httpx.TimeoutException:
                raise ExpertError(
                    f"{self._where()} did not answer within {self.read_timeout:g} s",
                    "raise the reference's timeout_s or check the server",
                ) from None
            except httpx.HTTPError as exc:
                raise ExpertError(f"{self._where()} failed: {type(exc).__name__}: {exc}", "check the server") from None
            else:
                if resp.status_code < 500 and resp.status_code != 429:
                    return resp
                problem = f"{self._where()} answered HTTP {resp.status_code}"
            if attempt < RETRIES:
                time.sleep(delay)
                delay *= 2
        raise ExpertError(problem, "start the server or fix the expert's URL")

    def generate(self, handoff: Handoff, settings: GenSettings) -> Iterator[Chunk]:
        if self.client is None:
            raise ExpertError(f"{self._where()} is not loaded")
        body = completion_body(self.spec.ref.model, render_prompt_text(handoff.meta_tokenizer, handoff), settings)
        request = self.client.build_request("POST", f"{self.base_url}/completions", json=body)
        resp = self._with_retries(lambda: self.client.send(request, stream=True))
        try:
            self._check_status(resp)
            yield from self._read_completion(resp)
        finally:
            resp.close()

    def _check_status(self, resp: Any) -> None:
        if resp.status_code in (401, 403):
            raise ExpertError(
                f"{self._where()} refused {self._credentials()} (HTTP {resp.status_code})", self._key_fix()
            )
        if resp.status_code >= 400:
            resp.read()
            raise ExpertError(
                f"{self._where()} refused the request: HTTP {resp.status_code} {resp.text[:200]!r}",
                "check the model name and the server",
            )

    def _read_completion(self, resp: Any) -> Iterator[Chunk]:
        """The completion as chunks, streamed (SSE) or whole (JSON); failures as ExpertError."""
        import httpx

        try:
            if "text/event-stream" in resp.headers.get("content-type", ""):
                yield from _read_events(resp)
            else:
                resp.read()
                yield _read_json(resp.json())
        except httpx.TimeoutException:
            raise ExpertError(
                f"{self._where()} stopped answering (no data for {self.read_timeout:g} s)",
                "raise the reference's timeout_s or check the server",
            ) from None
        except httpx.HTTPError as exc:
            raise ExpertError(
                f"{self._where()} failed mid-answer: {type(exc).__name__}: {exc}", "check the server"
            ) from None
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ExpertError(
                f"{self._where()} sent a malformed completion ({exc})",
                "point the reference at an OpenAI-compatible /v1 base URL",
            ) from None


def completion_body(model: str | None, prompt: str, settings: GenSettings) -> dict[str, Any]:
    """The /v1/completions request: OpenAI's fields, and the vLLM/SGLang extensions only when used."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "stream": True,
    }
    if settings.stop:
        body["stop"] = list(settings.stop)[:MAX_STOPS]
    if settings.seed is not None:
        body["seed"] = settings.seed
    if settings.ignore_eos:
        body["ignore_eos"] = True  # vLLM/SGLang extension, for benchmarks
    for name in ("presence_penalty", "frequency_penalty"):  # OpenAI's fields: sent only when used
        if getattr(settings, name):
            body[name] = getattr(settings, name)
    if settings.repetition_penalty != 1.0:
        body["repetition_penalty"] = settings.repetition_penalty  # vLLM/SGLang/etr-hub extension
    return body


def _read_events(resp: Any) -> Iterator[Chunk]:
    """Server-sent events: `data: {json}` lines, ended by `data: [DONE]`."""
    for line in resp.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise ValueError(f"server error: {event['error']}")
        choices = event.get("choices") or []
        if not choices:
            continue  # e.g. a final usage-only chunk
        text = choices[0].get("text") or ""
        yield Chunk(text, 1 if text else 0, choices[0].get("finish_reason"))


def _read_json(payload: dict) -> Chunk:
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    text = choice.get("text") or ""
    return Chunk(text, int(usage.get("completion_tokens") or (1 if text else 0)), choice.get("finish_reason"))
