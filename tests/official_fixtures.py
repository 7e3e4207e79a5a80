"""Offline stand-ins for the authors' release: a tiny folder in Stable Diffusion 1.5's layout and a tiny ``face.pt``.

``make_tiny_sd_folder`` writes ``unet/`` (UNet2DConditionModel with SD-1.5's block structure: 4 levels, cross-attention
in the first three down / last three up blocks, 2 layers per block, attention in the mid block), ``vae/``
(AutoencoderKL with SD-1.5's 4 levels, 4 latent channels, scaling factor 0.18215), ``text_encoder/`` (a tiny
CLIPTextModel, 77 positions) and ``tokenizer/`` (a CLIPTokenizer built from a 4-entry vocabulary: enough for the empty
prompt, which is only the start and end tokens plus padding), all with tiny widths. ``make_tiny_official_checkpoint``
saves another random UNet of that config as a plain ``torch.save`` state dict, as the authors' ``face.pt`` is.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

CROSS_ATTENTION_DIM = 16
RESOLUTION = 64  # 8 (VAE) x 8 (UNet's 3 downsamplings): the smallest size the tiny SD layout takes


def tiny_sd_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


def tiny_sd_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215, sample_size=RESOLUTION,
    )


def make_tiny_sd_folder(path, seed: int = 0, text_encoder: bool = True) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tiny_sd_unet().save_pretrained(path / "unet")
    tiny_sd_vae().save_pretrained(path / "vae")
    if text_encoder:
        tok_dir = path / "tokenizer_src"
        tok_dir.mkdir(parents=True, exist_ok=True)
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
        (tok_dir / "vocab.json").write_text(json.dumps(vocab))
        (tok_dir / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(vocab_file=str(tok_dir / "vocab.json"), merges_file=str(tok_dir / "merges.txt"),
                                  model_max_length=77, pad_token="<|endoftext|>")
        tokenizer.save_pretrained(path / "tokenizer")
        for f in tok_dir.iterdir():
            f.unlink()
        tok_dir.rmdir()
        config = CLIPTextConfig(vocab_size=16, hidden_size=CROSS_ATTENTION_DIM, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                projection_dim=CROSS_ATTENTION_DIM, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        CLIPTextModel(config).save_pretrained(path / "text_encoder")
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return path


def make_tiny_official_checkpoint(path, seed: int = 1) -> Path:
    """A plain ``{name: tensor}`` state dict of the tiny SD UNet, saved with ``torch.save`` (like ``face.pt``)."""
    torch.manual_seed(seed)
    unet = tiny_sd_unet()
    with torch.no_grad():  # move the weights off diffusers' zero init (conv_out etc.), so every block matters
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(unet.state_dict(), path)
    return Path(path)
