"""The tiny offline FLUX.1 pipeline: the real FLUX architecture (transformer, VAE, CLIP and T5
text encoders, flow-matching scheduler) at toy widths with random weights, and tokenizers
built in memory, so the service runs and is tested with no download. Its images are noise:
it is labelled as a fallback wherever its output shows, and is never a stand-in for FLUX.1.

It is saved once in Hugging Face layout and then loaded with the same
`FluxPipeline.from_pretrained(folder, local_files_only=True)` call as real weights.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

TINY_MODEL_NAME = "tiny-random-flux"
TINY_MODEL_LABEL = (
    "tiny-random-flux (offline fallback: random weights, not FLUX.1; images are noise)"
)
# Fixed, so every machine builds the same tiny weights and the same seeds give the same images.
_WEIGHTS_SEED = 20240801
_TEXT_WIDTH = 32


def _clip_tokenizer() -> object:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # Every byte-level symbol, so any prompt tokenizes (one token per byte, no merges).
    # Sorted: the alphabet comes in a hash set's order, which changes from one process to the
    # next, and with it every token id, text embedding and image.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _t5_tokenizer() -> object:
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += ["▁" + c for c in string.ascii_lowercase] + list(string.printable.strip())
    vocab = [(p, 0.0 if p.startswith("<") else -float(i)) for i, p in enumerate(pieces)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def build_tiny_flux() -> object:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    torch.manual_seed(_WEIGHTS_SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2, as in FLUX.1
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_WIDTH,
        pooled_projection_dim=_TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),  # type: ignore[arg-type]
            hidden_size=_TEXT_WIDTH,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=_TEXT_WIDTH,
            bos_token_id=clip_tokenizer.bos_token_id,  # type: ignore[attr-defined]
            eos_token_id=clip_tokenizer.eos_token_id,  # type: ignore[attr-defined]
            pad_token_id=clip_tokenizer.pad_token_id,  # type: ignore[attr-defined]
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),  # type: ignore[arg-type]
            d_model=_TEXT_WIDTH,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Four blocks: the same 8x spatial reduction as FLUX.1's VAE, at tiny widths.
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def ensure_tiny_flux(folder: Path) -> Path:
    """Build and save the tiny pipeline under `folder` unless it is already there.

    Written to a temporary sibling and renamed into place, so two processes starting at once
    never load a half-written folder."""
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tiny-flux-"))
    try:
        build_tiny_flux().save_pretrained(staging)  # type: ignore[attr-defined]
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
