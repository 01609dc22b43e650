"""What a frozen model computed, kept under `$ETR_HUB_HOME/cache` so no forward pass is paid twice.

- losses/<model key>/<dataset sha256>.safetensors: per-example summed response NLL.
- states/<meta fingerprint>[-<dtype>]/<shard>.safetensors: for each query (keyed by a hash of its
  routing prompt), the meta model's final hidden state at the routing position, the
  log-sum-exp of its word-token logits there and the largest of them: all that training an
  expert token, routing decisions and calibration need.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch


class RoutingStates(NamedTuple):
    """What the frozen meta model computes at each query's routing position (the last prompt token)."""

    hidden: torch.Tensor  # (N, C) final hidden state h
    lse: torch.Tensor  # (N,) logsumexp of the word-token logits W_V h (training's pooled word class)
    top: torch.Tensor  # (N,) the largest word-token logit (what an expert must beat to be picked greedily)


def digest(*parts: str) -> str:
    """A cache key made of its parts."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def query_key(messages: list[dict[str, str]] | str) -> str:
    """Hash of the conversation the routing position follows."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def save_atomic(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as one safetensors file, atomically (a crash leaves the old file or none)."""
    from safetensors.torch import save_file

    from etr_hub.store import atomic_file

    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


class LossCache:
    def __init__(self, root: Path):
        self.root = root / "losses"

    def _path(self, model_key: str, dataset_sha: str) -> Path:
        return self.root / model_key[:32] / f"{dataset_sha}.safetensors"

    def get(self, model_key: str, dataset_sha: str) -> torch.Tensor | None:
        path = self._path(model_key, dataset_sha)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        return load_file(path)["loss"]

    def put(self, model_key: str, dataset_sha: str, loss: torch.Tensor) -> None:
        save_atomic({"loss": loss.float().cpu()}, self._path(model_key, dataset_sha))


class StateCache:
    """Routing-position states of one meta model, sharded by write; looked up by query key."""

    def __init__(self, root: Path, meta_fingerprint: str, dtype: str = "float32"):
        # another dtype rounds differently: its states are its own (float32 keeps the older layout)
        self.dir = root / "states" / (meta_fingerprint[:32] + ("" if dtype == "float32" else f"-{dtype}"))

    def _index(self) -> dict[str, tuple[Path, int]]:
        from safetensors import safe_open

        index: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.dir.glob("*.safetensors")) if self.dir.is_dir() else []:
            with safe_open(shard, framework="pt") as f:
                keys = json.loads(f.metadata()["query_keys"])
                if set(RoutingStates._fields) - set(f.keys()):
                    continue  # written before `top` was kept: computed again
            index.update({k: (shard, i) for i, k in enumerate(keys)})
        return index

    def get(self, keys: list[str]) -> tuple[RoutingStates | None, list[int]]:
        """(states of every key, rows of missing keys zero; indices of keys not cached)."""
        import torch
        from safetensors.torch import load_file

        index = self._index()
        missing = [i for i, k in enumerate(keys) if k not in index]
        if len(missing) == len(keys):
            return None, missing
        shards = {path: load_file(path) for path in {index[k][0] for k in keys if k in index}}
        dim = next(iter(shards.values()))["hidden"].shape[1]
        states = RoutingStates(torch.zeros(len(keys), dim), torch.zeros(len(keys)), torch.zeros(len(keys)))
        for i, k in enumerate(keys):
            if k in index:
                path, row = index[k]
                for name, tensor in zip(RoutingStates._fields, states):
                    tensor[i] = shards[path][name][row]
        return states, missing

    def put_mean_row(self, w_v: torch.Tensor) -> None:
        """Cache the mean output-embedding row: the expert-token initialisation."""
        from etr_hub.routing import expert_token_init

        if not (self.dir / "mean_row.st").exists():
            save_atomic({"mean_row": expert_token_init(w_v).cpu()}, self.dir / "mean_row.st")

    def get_mean_row(self) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self.dir / "mean_row.st"
        return load_file(path)["mean_row"] if path.is_file() else None

    def put(self, keys: list[str], states: RoutingStates) -> None:
        if not keys:
            return
        shard = hashlib.sha256("".join(keys).encode()).hexdigest()[:24]
        save_atomic(
            {name: t.float().cpu() for name, t in zip(RoutingStates._fields, states)},
            self.dir / f"{shard}.safetensors",
            {"query_keys": json.dumps(keys)},
        )
