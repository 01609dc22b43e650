"""Load a frozen causal LM (+ tokenizer) from a ModelRef, safely and offline by default.

Safety: never `trust_remote_code` (passed as False to every loader, so no library ever asks on
stdin whether to run a folder's code), never unpickle (safetensors only; GGUF is not pickle).
Offline: Hub refs come from the local HF cache unless ETR_HUB_ALLOW_DOWNLOAD=1.
A PEFT expert on the meta model shares the meta model's weight tensors (no copy) through a
shallow structural clone, so wrapping it with LoRA layers leaves the meta model untouched.
Device and dtype: `device` / `dtype` as models/device.py resolves them (float32 on the CPU by
default); a PEFT adapter's own matrices follow its base model's.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etr_hub.config import settings
from etr_hub.errors import ModelLoadError
from etr_hub.models.compat import peft_deprecations_silenced
from etr_hub.models.device import DTYPES, placement, placement_of
from etr_hub.models.refs import ModelRef
from etr_hub.safety import PICKLE_SUFFIXES, code_in_folder

Status = Callable[[str], None] | None
# Weight formats that unpickle (run code) on load: never read, and never allowed in a bundle.
HF_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]  # weights, config, tokenizer


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, or a peft PeftModel; eval mode, requires_grad False
    tokenizer: Any
    ref: ModelRef
    base_shares_meta: bool = False  # True: a PEFT expert whose base weights ARE the meta model's
    adapter_name: str | None = None  # peft only: the adapter's name inside the PeftModel
    source: str | None = None  # the safetensors folder it was loaded from (not for GGUF or PEFT)
    fingerprint: str | None = None  # the meta fingerprint, when asked for (load_causal_lm(fingerprint=True))


def load_causal_lm(
    ref: ModelRef,
    *,
    meta: LoadedModel | None = None,
    device: str | None = "cpu",
    dtype: str | None = "float32",
    status: Status = None,
    role: str = "expert",
    fingerprint: bool = False,
) -> LoadedModel:
    """Load `ref` frozen. `meta` is required for a PEFT ref whose base is the meta model.

    `device` / `dtype`: as models/device.py's `placement` takes them (None: ETR_HUB_DEVICE /
    ETR_HUB_DTYPE; auto: the GPU if any, and there the model's own dtype), checked before it
    loads. `fingerprint`: also record the meta fingerprint (of the float32 weights, whatever
    `dtype` is) in `.fingerprint`. Any failure becomes a one-line ModelLoadError naming the model
    and a fix.
    """
    place = placement(device, dtype)
    dtype = place.dtype_for(config_dtype(ref) if place.dtype == "auto" else None)
    try:
        loaded = _LOADERS[ref.kind](ref, meta=meta, device=place.device, dtype=dtype, status=status)
        if fingerprint:
            loaded.fingerprint = _fingerprint(loaded, ref, dtype, status)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers/peft raise many types; the user needs one line
        raise ModelLoadError(f"could not load {role} model {ref.display()}: {_one_line(exc)}", _fix_for(ref)) from exc
    _freeze(loaded.model)
    _ensure_pad_token(loaded.tokenizer)
    return loaded


def config_dtype(ref: ModelRef) -> str | None:
    """The dtype a model's config.json names, read without loading the model; None where it names
    none or there is no config.json at hand (GGUF, PEFT, a Hub model not in the local cache)."""
    folder: str | None = None
    if ref.kind == "local":
        folder = ref.path
    elif ref.kind == "embedded":
        from etr_hub.models.default_meta import default_meta_dir

        folder = str(default_meta_dir())
    elif ref.kind == "hf" and ref.repo_id:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref.repo_id, "config.json", revision=ref.revision)
        folder = str(Path(cached).parent) if isinstance(cached, str) else None
    try:
        config = json.loads((Path(folder or "") / "config.json").read_text(encoding="utf-8")) if folder else None
    except (OSError, ValueError, RecursionError):
        return None
    value = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    return value if value in DTYPES else None


def _fingerprint(loaded: LoadedModel, ref: ModelRef, dtype: str, status: Status) -> str:
    """The meta fingerprint of the float32 weights: from the model as loaded in float32, else from
    its checkpoint's own values, else (GGUF) from a float32 load on the CPU for this alone."""
    from etr_hub.models.fingerprint import checkpoint_fingerprint, meta_fingerprint

    if dtype == "float32":
        return meta_fingerprint(loaded.model)
    stored = checkpoint_fingerprint(loaded.source, loaded.model) if loaded.source else None
    if stored is not None:
        return stored
    _report(status, f"fingerprinting {ref.display()} in float32")
    return meta_fingerprint(load_causal_lm(ref, status=status, role="meta").model)


def allow_download() -> bool:
    return settings().allow_download


def _load_local(ref: ModelRef, *, device: str, dtype: str, status: Status, **_: Any) -> LoadedModel:
    path = _model_dir(ref.path)
    _report(status, f"loading {path.name}")
    model, tokenizer = _from_pretrained(str(path), device, dtype, use_safetensors=True, local_files_only=True)
    return LoadedModel(model, tokenizer, ref, source=str(path))


def _load_hf(ref: ModelRef, *, device: str, dtype: str, status: Status, **_: Any) -> LoadedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    _report(status, f"fetching {ref.display()}" if allow_download() else f"loading {ref.display()}")
    # Resolve to a local snapshot first: only these patterns are fetched (no pickles, no code),
    # and the folder then gets the same checks as a local model.
    if ref.repo_id is None:
        raise ValueError(f"{ref.display()} names no repository")  # ModelRef.parse always sets it for hf:
    try:
        snapshot = snapshot_download(
            ref.repo_id, revision=ref.revision, allow_patterns=HF_PATTERNS, local_files_only=not allow_download()
        )
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"{ref.display()} is not in the local Hugging Face cache",
            "set ETR_HUB_ALLOW_DOWNLOAD=1 once to download it (safetensors and config files only)",
        ) from None
    path = _model_dir(snapshot)
    model, tokenizer = _from_pretrained(str(path), device, dtype, use_safetensors=True, local_files_only=True)
    return LoadedModel(model, tokenizer, ref, source=str(path))


def _load_gguf(ref: ModelRef, *, device: str, dtype: str, status: Status, **_: Any) -> LoadedModel:
    path = Path(ref.path or "")
    folder, name = (path, ref.gguf_file) if ref.gguf_file else (path.parent, path.name)
    if not (folder / name).is_file():
        raise ModelLoadError(f"GGUF file not found: {folder / name}", "check the path")
    _report(status, f"loading and de-quantizing {name}")
    model, tokenizer = _from_pretrained(str(folder), device, dtype, gguf_file=name, local_files_only=True)
    return LoadedModel(model, tokenizer, ref)


def _load_embedded(ref: ModelRef, *, device: str, dtype: str, status: Status, **_: Any) -> LoadedModel:
    from etr_hub.models.default_meta import ensure_default_meta

    path = ensure_default_meta(status=status)
    _report(status, f"loading {ref.name}")
    model, tokenizer = _from_pretrained(str(path), device, dtype, use_safetensors=True, local_files_only=True)
    return LoadedModel(model, tokenizer, ref, source=str(path))


def _load_peft(
    ref: ModelRef, *, meta: LoadedModel | None, device: str, dtype: str, status: Status, **_: Any
) -> LoadedModel:
    from peft import PeftModel

    adapter = _adapter_dir(ref.path)
    own_base = ref.base if ref.base is not None and (meta is None or ref.base != meta.ref) else None
    shares_meta = own_base is None
    if own_base is None:
        if meta is None:
            raise ModelLoadError(
                f"PEFT adapter {adapter} is for the meta model, but no meta model was given",
                "pass meta=<the loaded meta model> (or set the adapter's base)",
            )
        base = LoadedModel(share_weights(meta.model), meta.tokenizer, meta.ref)
    else:
        base = load_causal_lm(own_base, device=device, dtype=dtype, status=status, role="base")
    name = adapter_name_for(adapter)
    _report(status, f"applying adapter {adapter.name}")
    with peft_deprecations_silenced():
        model = PeftModel.from_pretrained(
            base.model, str(adapter), adapter_name=name, is_trainable=False, trust_remote_code=False
        )
    _place_adapter(model, *placement_of(base.model))
    return LoadedModel(model, _adapter_tokenizer(adapter) or base.tokenizer, ref, shares_meta, name)


def _place_adapter(model: Any, device: str, dtype: str) -> None:
    """The adapter's own matrices on its base model's device, in its dtype (PEFT keeps float32
    copies of half-precision adapters, which a lean LoRA layer cannot fold into the base)."""
    import torch

    want = getattr(torch, dtype)
    for name, param in model.named_parameters():
        if "lora_" in name and param.is_floating_point() and (str(param.device) != device or param.dtype != want):
            param.data = param.data.to(device=device, dtype=want)


def share_weights(model: Any) -> Any:
    """A structural copy of `model` whose parameters and buffers ARE the original's tensors.

    deepcopy with a memo that maps every tensor to itself copies modules, not weights; PEFT can
    then inject LoRA layers into the copy without touching the original model.
    """
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def adapter_name_for(adapter_dir: Path) -> str:
    """PEFT adapter names become module attribute names: letters, digits and underscores only."""
    return re.sub(r"\W", "_", adapter_dir.name) or "adapter"


def _from_pretrained(source: str, device: str, dtype: str, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_kwargs = {k: v for k, v in kwargs.items() if k in ("gguf_file", "local_files_only")}
    # adapter_kwargs: transformers' adapter lookup ignores the top-level local_files_only
    model: Any = AutoModelForCausalLM.from_pretrained(
        source, dtype=_torch_dtype(dtype), adapter_kwargs={"local_files_only": True}, trust_remote_code=False, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **tok_kwargs)
    if device != "cpu":
        model = model.to(device)
    return model, tokenizer


def _model_dir(path_text: str | None) -> Path:
    path = Path(path_text or "")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a model folder (no config.json)", "point at a save_pretrained output folder"
        )
    if (path / "adapter_config.json").is_file():  # transformers would silently apply it
        raise ModelLoadError(f"{path} holds a PEFT adapter (adapter_config.json)", f"load it as peft:{path}")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        what = f"only pickle weights ({', '.join(pickles[:3])})" if pickles else "no *.safetensors weights"
        raise ModelLoadError(
            f"{path} has {what}; etr-hub never unpickles",
            "convert it once to safetensors: load it where you trust it and model.save_pretrained(dir)",
        )
    return path


def _adapter_dir(path_text: str | None) -> Path:
    path = Path(path_text or "")
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a PEFT adapter (no adapter_config.json)", "check the path")
    if not (path / "adapter_model.safetensors").is_file():
        raise ModelLoadError(
            f"{path} has no adapter_model.safetensors; etr-hub never unpickles adapter_model.bin",
            "re-save the adapter with save_pretrained(dir, safe_serialization=True)",
        )
    why = code_in_folder(path)  # bundles are checked at `expert add`; this catches a store file changed since
    if why:
        raise ModelLoadError(
            f"adapter {path}: {why}",
            "etr-hub never runs code from an adapter; re-add the bundle with `etr-hub expert add --replace`",
        )
    return path


def _adapter_tokenizer(adapter: Path) -> Any | None:
    """Some adapters ship their own tokenizer (e.g. added tokens); use it when present."""
    if not (adapter / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(adapter), local_files_only=True, trust_remote_code=False)


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)  # a name models/device.py resolved


def _freeze(model: Any) -> None:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


def _ensure_pad_token(tokenizer: Any) -> None:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad id; masked out anyway


def _report(status: Status, message: str) -> None:
    if status is not None:
        status(message)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _fix_for(ref: ModelRef) -> str:
    return {
        "hf": "check the repo id and revision; the model must be in the local Hugging Face cache "
        "(set ETR_HUB_ALLOW_DOWNLOAD=1 to download it)",
        "local": "check the path: a transformers model folder with config.json and *.safetensors",
        "gguf": "check the path and that transformers supports this GGUF architecture",
        "peft": "check the adapter path and that it was trained on this base model",
        "embedded": "delete the converted folder under $ETR_HUB_HOME/models and retry",
        "openai": "openai endpoints are queried over HTTP, not loaded",
    }[ref.kind]


def _load_openai(ref: ModelRef, **_: Any) -> LoadedModel:
    raise ModelLoadError(
        f"{ref.display()} is a remote OpenAI-compatible endpoint, not a local model",
        "use it as an expert through the openai backend; a meta model must be local",
    )


_LOADERS = {
    "local": _load_local,
    "hf": _load_hf,
    "gguf": _load_gguf,
    "embedded": _load_embedded,
    "peft": _load_peft,
    "openai": _load_openai,
}
