"""Generation that the runtime and the expert backends share: below both, so neither imports the other.

    runner.py         CausalRunner: a frozen causal LM decoding one sequence with a KV cache
    shared_prefix.py  a LoRA expert continuing the meta runner's cache below its adapted layers
    plain.py          unrouted decoding (an expert's continuation, a raw completion)
    sampling.py       penalties, greedy / temperature + top-p
    text.py           incremental detokenising, stop strings across sources
    modelinfo.py      what a loaded model says about itself: end-of-turn ids, context, memory, sampling

This package may import `models` and the core modules, never `backends` or `runtime`.
Its modules import torch, so this file imports none of them.
"""
