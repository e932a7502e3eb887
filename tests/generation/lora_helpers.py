"""A real LoRA adapter for the tiny FLUX transformer, built once per test session.

Import the fixture into a test module (`from tests.generation.lora_helpers import
tiny_lora_fixture  # noqa: F401`) and ask for `tiny_lora`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LORA_FILE = "pytorch_lora_weights.safetensors"
# Random LoRA weights at their initial size barely move the tiny model's output (under one
# level per pixel); scaled up, the adapter changes an image as much as a new seed does.
LORA_B_GAIN = 20.0


def build_tiny_lora(model_dir: Path, out_dir: Path, *, seed: int = 0, gain: float = 1.0) -> Path:
    """Save a LoRA for `model_dir`'s transformer under `out_dir`; returns the file.
    Different seeds give different adapters; `gain` scales them (times LORA_B_GAIN)."""
    import peft
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel.from_pretrained(model_dir / "transformer")
    transformer.add_adapter(
        peft.LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    layers = {
        name: tensor * (LORA_B_GAIN * gain) if "lora_B" in name else tensor
        for name, tensor in get_peft_model_state_dict(transformer).items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(out_dir, transformer_lora_layers=layers)
    return out_dir / LORA_FILE


@pytest.fixture(scope="session", name="tiny_lora")
def tiny_lora_fixture(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LoRA .safetensors file for the session's tiny model. Tests must not modify it:
    copy it first."""
    return build_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora"))
