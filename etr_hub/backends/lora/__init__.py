"""A PEFT LoRA adapter; on the meta model it shares the meta model's weight tensors."""

from etr_hub.backends.lora.backend import LoraBackend

__all__ = ["LoraBackend"]
