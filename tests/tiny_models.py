"""Tiny random models for tests, built entirely offline (no Hugging Face Hub).

`make_tiny_llama` writes a LlamaForCausalLM with a byte-level tokenizer (so any text tokenizes)
and a ChatML chat template like SmolLM2's; `make_tiny_lora` writes a LoRA adapter for it.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<|im_start|>", "<|im_end|>"]
EOS = "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(*, chat_template: bool = True):
    """A byte-level BPE over the 256 byte symbols plus a few merges, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r")]  # a few, to exercise BPE
    for left, right in merges:
        vocab[left + right] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token=EOS,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE if chat_template else None,
    )
    return tokenizer


def make_tiny_llama(
    path: Path | str,
    *,
    vocab_size: int = 272,
    hidden_size: int = 32,
    layers: int = 2,
    seed: int = 0,
    chat_template: bool = True,
    initializer_range: float = 0.02,
) -> Path:
    """Write a tiny random LlamaForCausalLM (tied embeddings) and its tokenizer to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = make_tokenizer(chat_template=chat_template)
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {len(tokenizer)}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
        initializer_range=initializer_range,  # larger: attention that depends on content, as in a trained model
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_lora(
    base_path: Path | str,
    out_path: Path | str,
    seed: int = 0,
    r: int = 4,
    *,
    base_model_name: str | None = None,
    layers: list[int] | None = None,
) -> Path:
    """Write a LoRA adapter (q_proj, v_proj) with random non-zero B, so it changes the outputs.
    `layers`: only these decoder layers (layers_to_transform), as the shipped experts do.

    `base_model_name` overrides adapter_config's base_model_name_or_path (e.g. a Hub id, which
    ModelRef.parse reads as "on the meta model").
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True, local_files_only=True)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, layers_to_transform=layers
    )
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:  # LoRA initialises B to zero, which would make the adapter a no-op
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    out_path = Path(out_path)
    model.save_pretrained(out_path)
    if base_model_name is not None:
        cfg_file = out_path / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["base_model_name_or_path"] = base_model_name
        cfg_file.write_text(json.dumps(cfg, indent=2))
    return out_path


def domain_rows(domain: str, n: int, seed: int = 0) -> list[dict]:
    """Synthetic (query, response, label) rows with a distinctive vocabulary per domain."""
    import random

    words = {
        "astronomy": (["star", "planet", "orbit", "comet", "galaxy"], "the sky holds {w} number {i} forever"),
        "law": (["treaty", "court", "statute", "nation", "tribunal"], "under the {w} rule {i} applies to all"),
        "cooking": (["bread", "onion", "butter", "pasta", "salt"], "mix the {w} and bake it for {i} minutes"),
    }[domain]
    rng = random.Random(f"{domain}-{seed}")
    rows = []
    for _ in range(n):
        w, i = rng.choice(words[0]), rng.randint(1, 99)
        rows.append({"query": f"what about the {w} {i}?", "response": words[1].format(w=w, i=i), "label": domain})
    return rows


def train_tiny_lora(
    base_path: Path | str, out_path: Path | str, rows: list[dict], *, steps: int = 60, lr: float = 3e-2, seed: int = 0
) -> Path:
    """A LoRA expert actually fine-tuned on `rows` (response tokens only), so it is provably better there."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from etr_hub.models.chat import prompt_and_response_ids

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True, local_files_only=True)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    encoded = [prompt_and_response_ids(tok, r["query"], r["response"]) for r in rows]
    for step in range(steps):
        p, r = encoded[step % len(encoded)]
        ids = torch.tensor([p + r])
        labels = torch.tensor([[-100] * len(p) + r])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out_path)
    return Path(out_path)


def pretrain_tiny_meta(path: Path | str, rows: list[dict], *, steps: int = 60, lr: float = 1e-2, seed: int = 0) -> Path:
    """Fine-tune all weights of a tiny model in place for a few steps on `rows`, so that, like a real
    meta model, its hidden state at the assistant position says what kind of answer comes next."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from etr_hub.models.chat import prompt_and_response_ids

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, local_files_only=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    encoded = [prompt_and_response_ids(tok, r["query"], r["response"]) for r in rows]
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed)).tolist()
    for step in range(steps):
        p, r = encoded[order[step % len(order)]]
        loss = model(input_ids=torch.tensor([p + r]), labels=torch.tensor([[-100] * len(p) + r])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    return Path(path)
