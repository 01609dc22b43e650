"""Devices and dtypes: the resolver (by table), bfloat16 on the CPU end to end, the fingerprint
across dtypes, the CLI's --device / --dtype through the real console script, and CUDA placement
(the tests marked `cuda` run only where torch sees a GPU: benchmarks/gpu_check.sh runs them)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from etr_hub.errors import ModelLoadError
from etr_hub.models.chat import routing_prompt_ids
from etr_hub.models.device import (
    Accelerators,
    accelerators,
    parse_device,
    parse_dtype,
    placement,
    placement_of,
    resolve_device,
    resolve_dtype,
    runnable_dtypes,
)
from etr_hub.models.fingerprint import checkpoint_fingerprint, meta_fingerprint
from etr_hub.models.loading import load_causal_lm
from etr_hub.models.refs import ModelRef
from tests.helpers import build_labelled, init_world, invoke, run_cli
from tests.runtime_support import QUESTION, add_expert, lively_llama, routing_states
from tests.tiny_models import make_tiny_lora

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA GPU (benchmarks/gpu_check.sh runs these on one)")
OTHER = [{"role": "user", "content": "hello, how are you today?"}]
GREEDY = {"temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": 6}


# -- the resolver: pure, by table ------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,parsed",
    [
        ("auto", "auto"),
        ("cpu", "cpu"),
        (" CUDA ", "cuda"),
        ("cuda:0", "cuda:0"),
        ("cuda:07", "cuda:7"),
        ("mps", "mps"),
        ("gpu", None),
        ("cuda:", None),
        ("cuda:-1", None),
        ("cuda:x", None),
        ("cpu:0", None),
        ("mps:1", None),
        ("", None),
    ],
)
def test_parse_device(text, parsed):
    assert parse_device(text) == parsed


@pytest.mark.parametrize(
    "text,parsed",
    [("auto", "auto"), ("float32", "float32"), ("BFloat16", "bfloat16"), ("float16", "float16"), ("half", None)],
)
def test_parse_dtype(text, parsed):
    assert parse_dtype(text) == parsed


NONE, ONE_GPU, TWO_GPUS, MAC = Accelerators(), Accelerators(cuda=1), Accelerators(cuda=2), Accelerators(mps=True)


@pytest.mark.parametrize(
    "requested,seen,device",
    [
        ("auto", NONE, "cpu"),
        ("auto", ONE_GPU, "cuda"),
        ("auto", MAC, "mps"),
        ("auto", Accelerators(cuda=1, mps=True), "cuda"),  # CUDA first
        ("cpu", TWO_GPUS, "cpu"),
        ("cuda", ONE_GPU, "cuda"),
        ("cuda:1", TWO_GPUS, "cuda:1"),
        ("mps", MAC, "mps"),
    ],
)
def test_resolve_device(requested, seen, device):
    assert resolve_device(requested, seen) == device


@pytest.mark.parametrize(
    "requested,seen,message",
    [
        ("cuda", NONE, "`device=cuda`: torch sees no CUDA GPU here — use `device=cpu` (or auto)"),
        ("cuda:0", MAC, "`device=cuda:0`: torch sees no CUDA GPU here"),
        ("cuda:2", TWO_GPUS, "`device=cuda:2`: torch sees 2 CUDA GPU(s), cuda:0 to cuda:1 — use `device=cuda:1`"),
        ("cuda:7", ONE_GPU, "torch sees 1 CUDA GPU(s), cuda:0 to cuda:0 — use `device=cuda:0` or lower"),
        ("mps", ONE_GPU, "`device=mps`: torch sees no Apple GPU (MPS) here — use `device=cpu` (or auto)"),
    ],
)
def test_a_device_this_machine_lacks_is_refused_in_one_line(requested, seen, message):
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        resolve_device(requested, seen)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "requested,device,model_dtype,runs,dtype",
    [
        ("auto", "cpu", "bfloat16", ("float32", "bfloat16", "float16"), "float32"),  # the CPU: float32
        ("auto", "cuda", "bfloat16", ("float32", "bfloat16", "float16"), "bfloat16"),  # a GPU: the model's own
        ("auto", "cuda:1", "float16", ("float32", "bfloat16", "float16"), "float16"),
        ("auto", "mps", "float32", ("float32", "float16"), "float32"),
        ("auto", "cuda", None, ("float32", "bfloat16", "float16"), "float32"),  # the config names none
        ("auto", "mps", "bfloat16", ("float32", "float16"), "float32"),  # one the device cannot run
        ("bfloat16", "cpu", "float32", ("float32", "bfloat16", "float16"), "bfloat16"),  # asked for: as asked
        ("float32", "cuda", "bfloat16", ("float32", "bfloat16", "float16"), "float32"),
    ],
)
def test_resolve_dtype(requested, device, model_dtype, runs, dtype):
    assert resolve_dtype(requested, device, model_dtype, runs) == dtype


def test_a_dtype_the_device_cannot_run_is_refused_in_one_line():
    with pytest.raises(ModelLoadError, match=r"`dtype=bfloat16` does not run on mps here \(it runs float32, float16\)"):
        resolve_dtype("bfloat16", "mps", None, ("float32", "float16"))


def test_torch_on_this_cpu_runs_every_dtype_and_auto_is_float32_here():
    """torch 2.13's CPU kernels run half precision too (float16 matmuls were once missing there)."""
    assert runnable_dtypes("cpu") == ("float32", "bfloat16", "float16")
    if not CUDA and not accelerators().mps:
        assert placement() == placement("auto", "auto")
        assert placement().device == "cpu" and placement().dtype_for("bfloat16") == "float32"


def test_the_environment_chooses_when_no_argument_does(monkeypatch):
    monkeypatch.setenv("ETR_HUB_DEVICE", "cpu")
    monkeypatch.setenv("ETR_HUB_DTYPE", "bfloat16")
    assert (placement().device, placement().dtype) == ("cpu", "bfloat16")
    assert placement(dtype="float16").dtype == "float16"  # an argument wins
    monkeypatch.setenv("ETR_HUB_DTYPE", "half")
    with pytest.raises(ModelLoadError, match="ETR_HUB_DTYPE=half is not a dtype — use auto, float32, bfloat16"):
        placement()
    monkeypatch.setenv("ETR_HUB_DEVICE", "gpu")
    with pytest.raises(ModelLoadError, match="ETR_HUB_DEVICE=gpu is not a device — use auto, cpu, cuda, cuda:N or mps"):
        placement(dtype="float32")


# -- tiny models --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A lively tiny meta model, a LoRA adapter on its upper layer (so the expert may continue the
    meta cache), a local expert, and W_E rows set in float32 so that the astro token wins at the
    routing position of QUESTION by 1.5 nats over the best word and loses by 1.5 on OTHER."""
    root = tmp_path_factory.mktemp("devices-zoo")
    path = lively_llama(root / "meta")
    meta = load_causal_lm(ModelRef(kind="local", path=str(path)))
    prompts = [routing_prompt_ids(meta.tokenizer, m)[0] for m in (QUESTION, OTHER)]
    h = torch.stack([routing_states(meta.model, p)[-1] for p in prompts])  # (2, C) float64
    top = (h @ meta.model.get_output_embeddings().weight.double().T).max(dim=-1).values  # (2,)
    row = torch.linalg.lstsq(h, (top + torch.tensor([1.5, -1.5], dtype=torch.float64)).unsqueeze(1)).solution
    return SimpleNamespace(
        path=path,
        fp=meta_fingerprint(meta.model),
        row=row.T.float(),  # (1, C)
        never=(-row.T).float(),  # (1, C): loses on both
        adapter=make_tiny_lora(path, root / "lora", seed=1, layers=[1]),
        local=lively_llama(root / "local-expert", seed=1),
    )


@pytest.fixture
def tiny(zoo, registry):
    registry.register_meta(
        reference={"kind": "local", "path": str(zoo.path)},
        display="tiny-meta",
        fingerprint=zoo.fp,
        hidden_size=32,
        vocab_size=272,
    )
    add_expert(
        registry,
        "astro",
        zoo.row,
        ModelRef(kind="peft", path="adapter"),
        fingerprint=zoo.fp,
        hidden=32,
        adapter=zoo.adapter,
    )
    add_expert(registry, "plain", zoo.never, ModelRef(kind="local", path=str(zoo.local)), fingerprint=zoo.fp, hidden=32)
    return SimpleNamespace(**vars(zoo), registry=registry)


def routes(hub) -> dict[str, list[tuple[str, int]]]:
    return {
        m[0]["content"]: [(s.expert, s.token_index) for s in hub.chat(m, **GREEDY).route] for m in (QUESTION, OTHER)
    }


def test_bfloat16_on_the_cpu_routes_as_float32_does(tiny):
    from etr_hub.runtime import Hub

    hubs = {dtype: Hub.open(tiny.registry, device="cpu", dtype=dtype) for dtype in ("float32", "bfloat16")}
    want = {QUESTION[0]["content"]: [("astro", 0)], OTHER[0]["content"]: []}
    for dtype, hub in hubs.items():
        assert placement_of(hub.meta.model) == ("cpu", dtype)
        assert hub.w_e_t.dtype == torch.float32  # routing logits in float32 (runtime/decode.py)
        assert [e.name for e in hub.experts] == ["astro", "plain"] and hub.skipped == []  # the fingerprint held
        assert routes(hub) == want, dtype
        lora = hub.pool.get("astro")
        assert placement_of(lora.loaded.model) == ("cpu", dtype)
        assert {str(p.dtype) for n, p in lora.loaded.model.named_parameters() if "lora_" in n} <= {f"torch.{dtype}"}
        assert lora.lean_layers and lora.first_layer == 1  # lean LoRA layers, and the meta cache continued
        assert placement_of(hub.pool.get("plain").loaded.model) == ("cpu", dtype)  # a local expert follows too
    p = {d: hub.explain(QUESTION[0]["content"]).experts[0].probability for d, hub in hubs.items()}
    assert p["bfloat16"] == pytest.approx(p["float32"], abs=0.1) and p["float32"] > 0.5


def test_the_meta_fingerprint_does_not_depend_on_the_dtype(zoo, tmp_path):
    ref = ModelRef(kind="local", path=str(zoo.path))
    for dtype in ("bfloat16", "float16"):
        loaded = load_causal_lm(ref, dtype=dtype, fingerprint=True)
        assert placement_of(loaded.model) == ("cpu", dtype)
        assert loaded.fingerprint == zoo.fp
        assert meta_fingerprint(loaded.model) != zoo.fp  # the rounded weights would not pass: the checkpoint's do
    other = lively_llama(tmp_path / "other", seed=5)
    assert checkpoint_fingerprint(other, loaded.model) is None  # another model's values: not taken for these


def test_a_token_trained_in_bfloat16_loads_in_float32_and_back(world, registry):
    from etr_hub.runtime import Hub

    init_world(world)
    build_labelled(world, "astronomy")  # float32 losses and states
    r = invoke(
        "query-set", "build", "law", "--expert", str(world["expert:law"]), "--data", str(world["data"]),
        "--rule", "labelled", "--label", "law", "--size", "10", "--dtype", "bfloat16", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in ("astronomy", "law"):
        r = invoke("train-token", name, "--lr", "5e-3", "--epochs", "3", "--dtype", "bfloat16", "--json")
        assert r.returncode == 0, r.stderr
    states = sorted(p.name for p in (registry.settings.cache_dir / "states").iterdir())
    fp = registry.require_meta().fingerprint
    assert states == [fp[:32], f"{fp[:32]}-bfloat16"]  # what each dtype computed is its own
    losses = list((registry.settings.cache_dir / "losses").iterdir())
    assert len(losses) == 4  # the meta model's in float32 and in bfloat16 (same data), and each expert's
    for dtype in ("float32", "bfloat16"):
        hub = Hub.open(registry, device="cpu", dtype=dtype)
        assert [e.name for e in hub.experts] == ["astronomy", "law"] and hub.skipped == [], dtype


def test_every_model_loading_command_takes_device_and_dtype():
    commands = [
        ["chat"],
        ["serve"],
        ["explain"],
        ["train-token"],
        ["query-set", "build"],
        ["eval", "mmlu"],
        ["eval", "tasks"],
        ["expert", "add"],
    ]
    for command in commands:
        r = invoke(*command, "--help")
        assert r.returncode == 0 and "--device" in r.stdout and "--dtype" in r.stdout, command


def test_the_console_script_chats_in_bfloat16_with_the_same_route(tiny):
    r = run_cli(
        "chat", "--once", QUESTION[0]["content"], "--json", "--device", "cpu", "--dtype", "bfloat16",
        "--temperature", "0", "--max-new-tokens", "4",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [(s["expert"], s["token_index"]) for s in json.loads(r.stdout)["route"]] == [("astro", 0)]


USAGE = [
    (["--device", "gpu"], "Invalid value for '--device': 'gpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    (["--dtype", "float64"], "'float64' is not one of 'auto', 'float32', 'bfloat16', 'float16'"),
]


@pytest.mark.parametrize("flags,message", USAGE)
def test_a_malformed_device_or_dtype_is_a_usage_error(flags, message):
    r = run_cli("explain", "hello", *flags)
    assert r.returncode == 2, r.stderr
    assert message in " ".join(r.stderr.replace("│", " ").split()), r.stderr


def one_line(r) -> str:
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    return r.stderr.strip()


@pytest.mark.skipif(CUDA or accelerators().mps, reason="this machine has a GPU")
def test_a_device_this_machine_lacks_is_one_line_and_exit_4(tiny):
    r = run_cli("explain", "hello", "--device", "cuda")
    assert r.returncode == 4, r.stderr
    assert one_line(r) == (
        "error: --device cuda: torch sees no CUDA GPU here — use --device cpu (or auto), "
        "or a CUDA build of torch on a GPU"
    )
    r = run_cli("chat", "--once", "hello", "--device", "mps")
    assert r.returncode == 4 and "error: --device mps: torch sees no Apple GPU (MPS) here" in one_line(r)
    r = run_cli("explain", "hello", env={"ETR_HUB_DEVICE": "cuda:7"})
    assert r.returncode == 4 and one_line(r).startswith("error: ETR_HUB_DEVICE=cuda:7: torch sees no CUDA GPU here")
    r = run_cli("explain", "hello", env={"ETR_HUB_DTYPE": "half"})
    assert r.returncode == 4 and "ETR_HUB_DTYPE=half is not a dtype" in one_line(r)


# -- CUDA (skipped without a GPU) ----------------------------------------------------------------------
@cuda
def test_on_cuda_everything_follows_the_meta_model_and_routes_as_on_the_cpu(tiny):
    from etr_hub.runtime import Hub

    want = routes(Hub.open(tiny.registry, device="cpu", dtype="float32"))
    for dtype in ("float32", "bfloat16"):
        hub = Hub.open(tiny.registry, device="cuda", dtype=dtype)
        assert placement_of(hub.meta.model) == ("cuda:0", dtype)
        assert hub.w_e_t.device.type == "cuda" and hub.w_e_t.dtype == torch.float32
        assert routes(hub) == want, dtype
        lora = hub.pool.get("astro")
        assert {p.device.type for p in lora.loaded.model.parameters()} == {"cuda"}
        assert lora.lean_layers and lora.first_layer == 1
        assert placement_of(hub.pool.get("plain").loaded.model) == ("cuda:0", dtype)
        sampled = [hub.chat(QUESTION, temperature=0.8, seed=7, max_new_tokens=8).text for _ in range(2)]
        assert sampled[0] == sampled[1]  # a seed reproduces on the GPU too (drawn on the CPU)
        explained = hub.explain(QUESTION[0]["content"])
        assert explained.winner == "astro"


@cuda
def test_on_cuda_the_batched_passes_match_the_cpu(tiny):
    from etr_hub.models.scoring import encode_pairs, score_pairs
    from etr_hub.session import ModelSession

    queries = [QUESTION[0]["content"], OTHER[0]["content"], "what about the comet 7?"]
    on_cpu = ModelSession(tiny.registry, device="cpu", dtype="float32")
    on_gpu = ModelSession(tiny.registry, device="cuda", dtype="float32")
    h_cpu, lse_cpu, top_cpu = on_cpu.routing_states(queries)
    on_gpu.states.dir = on_gpu.states.dir.with_name("gpu-pass")  # compute, not read the CPU's cache
    h_gpu, lse_gpu, top_gpu = on_gpu.routing_states(queries)
    assert h_gpu.device.type == "cpu"  # cached and trained on as float32 CPU tensors
    assert torch.allclose(h_cpu, h_gpu, atol=1e-3) and torch.allclose(lse_cpu, lse_gpu, atol=1e-3)
    assert torch.allclose(top_cpu, top_gpu, atol=1e-3)
    assert placement_of(on_gpu.meta.model) == ("cuda:0", "float32")
    pairs = encode_pairs(on_cpu.meta.tokenizer, queries, ["the sky holds a star", "fine, thanks", "it orbits"])
    cpu_pass = score_pairs(on_cpu.meta.model, on_cpu.meta.tokenizer, pairs, want_states=True)
    gpu_pass = score_pairs(on_gpu.meta.model, on_gpu.meta.tokenizer, pairs, want_states=True)
    assert gpu_pass.loss.device.type == "cpu" and torch.allclose(cpu_pass.loss, gpu_pass.loss, rtol=1e-3, atol=1e-3)
    assert gpu_pass.states is not None and cpu_pass.states is not None
    for cpu_t, gpu_t in zip(cpu_pass.states, gpu_pass.states):  # hidden, lse, top
        assert torch.allclose(cpu_t, gpu_t, atol=1e-3)


@cuda
def test_a_gpu_this_machine_lacks_is_refused(tiny):
    count = torch.cuda.device_count()
    with pytest.raises(ModelLoadError, match=f"torch sees {count} CUDA GPU"):
        placement(f"cuda:{count}")
    r = run_cli("explain", "hello", "--device", f"cuda:{count}")
    assert r.returncode == 4 and f"error: --device cuda:{count}: torch sees {count} CUDA GPU(s)" in one_line(r)


@cuda
def test_the_console_script_chats_on_cuda(tiny):
    r = run_cli(
        "chat", "--once", QUESTION[0]["content"], "--json", "--device", "cuda", "--dtype", "bfloat16",
        "--temperature", "0", "--max-new-tokens", "4",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [(s["expert"], s["token_index"]) for s in json.loads(r.stdout)["route"]] == [("astro", 0)]
