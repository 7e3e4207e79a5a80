"""Converts the authors' released SemFlow checkpoint into a `SemFlowPipeline` folder (Hub layout).

The official repository (github.com/wang-chaoyang/SemFlow, MIT licence) publishes one checkpoint, ``face.pt`` in the
Hub repo ``chaoyangw/semflow``: the state dict of a fully fine-tuned Stable Diffusion 1.5 ``UNet2DConditionModel``
trained on CelebAMask-HQ (19 face classes). The authors run it with SD-1.5's VAE and the empty-prompt CLIP embedding;
this module assembles exactly that:

- the UNet, built from the SD folder's ``unet/config.json`` with the official weights (saved as safetensors);
- SD-1.5's VAE;
- the empty-prompt embedding, computed once with SD-1.5's text encoder and stored (``empty_prompt_embedding/``), so
  no text encoder is needed at run time;
- the paper palette (``k=6, s=50``) over CelebAMask-HQ's 19 classes, with the dataset's usual display colours;
- the scheduler on the authors' integer timestep grid (``timestep_spacing="official"``), velocity prediction, 25
  Euler steps for both directions, synthesis perturbation U(-0.05, 0.05) in pixel space;
- a model card crediting the authors.

Command line: ``semflow convert-official --checkpoint face.pt --stable-diffusion SD -o OUT``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Optional, Union

import torch

from .pipeline_semflow import SemFlowPipeline
from .prompt_embedding import SemFlowPromptEmbedding
from .scheduling_semflow import SemFlowScheduler

OFFICIAL_REPO_ID = "chaoyangw/semflow"
OFFICIAL_FILENAME = "face.pt"
OFFICIAL_CODE_URL = "https://github.com/wang-chaoyang/SemFlow"

# CelebAMask-HQ's 19 classes in the order of the authors' loader (module/data/celeb.py): id 0 is background.
CELEBAMASK_HQ_CLASSES = [
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
]
# The colour map that CelebAMask-HQ's own tools and most face-parsing code draw these classes with.
CELEBAMASK_HQ_COLORS = [
    [0, 0, 0], [204, 0, 0], [76, 153, 0], [204, 204, 0], [51, 51, 255], [204, 0, 204], [0, 255, 255],
    [255, 204, 204], [102, 51, 0], [255, 0, 0], [102, 204, 0], [255, 255, 0], [0, 0, 153], [0, 0, 204],
    [255, 51, 153], [0, 204, 204], [0, 51, 0], [255, 153, 51], [0, 204, 0],
]
IGNORE_INDEX = 255  # unlabelled pixels: painted white, as the authors' mask painter leaves them
IGNORE_COLOR = [255, 255, 255]


class NotAStateDictError(ValueError):
    """The checkpoint file is not a plain ``{name: tensor}`` state dict."""


def resolve_checkpoint(checkpoint: Union[str, os.PathLike], **hub_kwargs) -> str:
    """A local file path, or ``owner/repo/filename`` on the Hub (e.g. ``chaoyangw/semflow/face.pt``), downloaded
    with ``huggingface_hub.hf_hub_download``."""
    path = os.fspath(checkpoint)
    if os.path.isfile(path):
        return path
    parts = path.split("/")
    if os.path.isabs(path) or path.startswith((".", "~")) or len(parts) < 3 or os.path.isdir(parts[0]):
        raise FileNotFoundError(f"checkpoint not found: `{path}` (a local file, or `owner/repo/filename` on the Hub, "
                                f"e.g. `{OFFICIAL_REPO_ID}/{OFFICIAL_FILENAME}`).")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:]), **hub_kwargs)


def load_official_state_dict(path: Union[str, os.PathLike]) -> dict:
    """Loads a ``.pt``/``.bin`` state dict with ``torch.load(weights_only=True)`` (no arbitrary pickled code runs).

    Raises `NotAStateDictError` for anything but a non-empty ``{str: torch.Tensor}`` dict: a pickle that
    ``weights_only`` refuses (custom classes, code), a training checkpoint that nests the weights (``{"state_dict":
    ...}``, optimizer states), or non-tensor values. A ``module.`` prefix on every key (a DDP/DeepSpeed wrapper) is
    removed.
    """
    path = os.fspath(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise NotAStateDictError(
            f"`{path}` is not a plain tensor state dict: torch.load(weights_only=True) refused it ({e}). Only a "
            "{name: tensor} dict, as the authors' face.pt, is accepted; nothing that needs arbitrary code to load."
        ) from e
    if not isinstance(state, dict) or not state:
        raise NotAStateDictError(f"`{path}` holds a {type(state).__name__}, not a {{name: tensor}} state dict.")
    bad = [(k, type(v).__name__) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        nested = [k for k, t in bad if t in ("dict", "OrderedDict")]
        hint = (f" It nests dicts under {nested[:3]}: extract the UNet's weights first, e.g. "
                f"`torch.save(torch.load(path, weights_only=True)[{nested[0]!r}], 'unet.pt')`." if nested else "")
        raise NotAStateDictError(f"`{path}` is not a plain tensor state dict: {len(bad)} entries are not tensors, e.g. "
                                 f"{bad[:3]}.{hint}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def build_unet(stable_diffusion: str, state_dict: dict, dtype: torch.dtype = torch.float32, **hub_kwargs):
    """SD's ``UNet2DConditionModel`` from ``<stable_diffusion>/unet/config.json`` with ``state_dict`` (strict)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(stable_diffusion, subfolder="unet", **hub_kwargs)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"the checkpoint does not fit the UNet of `{stable_diffusion}`: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, {len(shapes)} shape mismatches "
            f"{shapes[:3]}. Is it a Stable Diffusion 1.5 UNet state dict, and `{stable_diffusion}` SD-1.5?"
        )
    unet.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    return unet.eval()


@torch.no_grad()
def empty_prompt_embedding(stable_diffusion: str, **hub_kwargs) -> torch.Tensor:
    """The empty prompt's CLIP embedding ``(1, 77, 768)``: SD's tokenizer pads ``""`` to its max length, the text
    encoder's last hidden state (what the authors' ``sd_null_condition`` computes)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(stable_diffusion, subfolder="tokenizer", **hub_kwargs)
    text_encoder = CLIPTextModel.from_pretrained(stable_diffusion, subfolder="text_encoder", **hub_kwargs).eval()
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()


def load_prompt_embedding_file(path: Union[str, os.PathLike]) -> torch.Tensor:
    """A precomputed embedding saved with safetensors under the key ``prompt_embeds`` (``(1, L, D)``)."""
    from safetensors.torch import load_file

    tensors = load_file(os.fspath(path))
    if "prompt_embeds" not in tensors:
        raise ValueError(f"`{path}` has no `prompt_embeds` tensor (keys: {sorted(tensors)[:5]}).")
    return tensors["prompt_embeds"].float()


def convert_official(
    checkpoint: Union[str, os.PathLike],
    stable_diffusion: str,
    output_dir: Optional[Union[str, os.PathLike]] = None,
    dtype: torch.dtype = torch.float32,
    prompt_embedding: Optional[Union[str, os.PathLike, torch.Tensor]] = None,
    num_inference_steps: int = 25,
    processing_resolution: int = 512,
    **hub_kwargs,
) -> SemFlowPipeline:
    """Builds (and with ``output_dir`` saves, with a model card) the `SemFlowPipeline` of the authors' checkpoint.

    Args:
        checkpoint: ``face.pt`` (a path, or ``chaoyangw/semflow/face.pt`` on the Hub).
        stable_diffusion: a Stable Diffusion 1.5 folder (``unet/config.json``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``) or its Hub id.
        output_dir: where to save the pipeline (safetensors, Hub layout, model card); ``None`` only returns it.
        dtype: the UNet's and VAE's saved dtype (``torch.float32``: the UNet is 3.4 GB; ``float16`` halves it).
        prompt_embedding: a precomputed empty-prompt embedding (a tensor, or a safetensors file with
            ``prompt_embeds``) instead of computing it with the SD folder's text encoder.
        num_inference_steps: the default Euler steps of both directions (the authors' demo uses 25).
        processing_resolution: the longest edge the model works at (the authors train and run at 512x512).
    """
    from diffusers import AutoencoderKL

    state = load_official_state_dict(resolve_checkpoint(checkpoint, **hub_kwargs))
    unet = build_unet(stable_diffusion, state, dtype, **hub_kwargs)
    del state
    vae = AutoencoderKL.from_pretrained(stable_diffusion, subfolder="vae", dtype=dtype, **hub_kwargs).eval()
    if prompt_embedding is None:
        embeds = empty_prompt_embedding(stable_diffusion, **hub_kwargs)
        source = f"{stable_diffusion} (text_encoder/, tokenizer/)"
    elif isinstance(prompt_embedding, torch.Tensor):
        embeds, source = prompt_embedding.float(), "a precomputed tensor"
    else:
        embeds, source = load_prompt_embedding_file(prompt_embedding), os.fspath(prompt_embedding)
    if embeds.shape[-1] != unet.config.cross_attention_dim:
        raise ValueError(f"the prompt embedding is {embeds.shape[-1]} wide, but the UNet's cross_attention_dim is "
                         f"{unet.config.cross_attention_dim}.")
    embedding = SemFlowPromptEmbedding.from_embedding(embeds, prompt="", source=source)
    label_colors = {str(i): c for i, c in enumerate(CELEBAMASK_HQ_COLORS)}
    label_colors[str(IGNORE_INDEX)] = IGNORE_COLOR
    pipe = SemFlowPipeline(
        unet=unet, vae=vae, empty_prompt_embedding=embedding,
        scheduler=SemFlowScheduler(num_train_timesteps=1000, prediction_type="velocity", solver="euler",
                                   timestep_spacing="official"),
        id2label={str(i): n for i, n in enumerate(CELEBAMASK_HQ_CLASSES)}, label_colors=label_colors,
        ignore_index=IGNORE_INDEX, palette="paper", default_num_inference_steps=num_inference_steps,
        default_synthesis_num_inference_steps=num_inference_steps, default_synthesis_perturbation=0.05,
        default_processing_resolution=processing_resolution,
    )
    if output_dir is not None:
        pipe.save_pretrained(output_dir)
        write_model_card(output_dir, checkpoint=os.fspath(checkpoint), stable_diffusion=stable_diffusion,
                         num_inference_steps=num_inference_steps, dtype=dtype)
    return pipe


def write_model_card(output_dir, checkpoint: str, stable_diffusion: str, num_inference_steps: int = 25,
                     dtype: torch.dtype = torch.float32, repo_id: Optional[str] = None) -> Path:
    """README.md for the converted folder: credit, licences, provenance, usage."""
    name = repo_id or os.fspath(output_dir)
    card = f"""---
license: creativeml-openrail-m
library_name: diffusers
pipeline_tag: image-segmentation
tags:
- semflow
- semantic-segmentation
- semantic-image-synthesis
- rectified-flow
- celebamask-hq
base_model: stable-diffusion-v1-5/stable-diffusion-v1-5
---

# SemFlow, CelebAMask-HQ (the authors' checkpoint, converted)

The weights are the authors' own: **SemFlow: Binding Semantic Segmentation and Image Synthesis via Rectified Flow**,
Chaoyang Wang, Xiangtai Li, Lu Qi, Henghui Ding, Yunhai Tong, Ming-Hsuan Yang, NeurIPS 2024
([arXiv 2405.20282](https://arxiv.org/abs/2405.20282), code: {OFFICIAL_CODE_URL}, checkpoint: `{OFFICIAL_REPO_ID}` /
`{OFFICIAL_FILENAME}` on the Hugging Face Hub). This folder only repackages them as a diffusers pipeline
(`SemFlowPipeline`); all credit for the model goes to the authors. Please cite their paper:

```bibtex
@inproceedings{{wang2024semflow,
  title     = {{SemFlow: Binding Semantic Segmentation and Image Synthesis via Rectified Flow}},
  author    = {{Wang, Chaoyang and Li, Xiangtai and Qi, Lu and Ding, Henghui and Tong, Yunhai and Yang, Ming-Hsuan}},
  booktitle = {{Advances in Neural Information Processing Systems (NeurIPS)}},
  year      = {{2024}}
}}
```

## Licence

- The authors' code is released under the **MIT licence** (Copyright (c) 2024 Chaoyang Wang).
- The weights are a full fine-tune of **Stable Diffusion 1.5**'s UNet and use its VAE, so they are distributed under
  SD-1.5's **CreativeML OpenRAIL-M** licence and its use restrictions. If the authors' Hub repo states other terms for
  `{OFFICIAL_FILENAME}`, those apply as well.

## What is in this folder

| component | source |
|---|---|
| `unet/` | SD-1.5's `UNet2DConditionModel` config + the authors' `{OFFICIAL_FILENAME}` weights ({str(dtype).replace('torch.', '')}, safetensors) |
| `vae/` | SD-1.5's VAE (`{stable_diffusion}`) |
| `empty_prompt_embedding/` | the empty prompt's CLIP embedding (1x77x768), computed once with SD-1.5's text encoder: no text encoder at run time |
| `scheduler/` | `SemFlowScheduler`, velocity prediction, Euler, the authors' integer timestep grid (`timestep_spacing="official"`) |

Converted with `semflow convert-official --checkpoint {checkpoint} --stable-diffusion {stable_diffusion} -o {name}`.

## Conventions (as in the authors' code)

- 19 classes (CelebAMask-HQ, id 0 = background): {", ".join(CELEBAMASK_HQ_CLASSES)}; anchors from the paper palette
  (`k=6, s=50`: class c -> 50 * (c // 36, (c % 36) // 6, c % 6) on 0..255); unlabelled (255) is white.
- The ODE runs in SD-1.5 latents (`vae.encode(x).latent_dist.mode() * 0.18215`), t = 0 is the photo, t = 1 the mask.
- Segmentation: forward through UNet times 0, 40, ..., 960 with `x += v / N` (N = {num_inference_steps} by default);
  class ids by nearest anchor. Synthesis: the anchor mask + U(-0.05, 0.05) in pixel space, encoded with the mode,
  then backward through 1000, 960, ..., 40 with `x -= v / N`. No guidance.
- The authors work at 512x512 (images resized bilinearly, masks nearest); so does this folder by default.

## Usage

```python
import torch
from PIL import Image
from semflow_pipeline import SemFlowPipeline   # pip install semflow-pipeline (this project)

pipe = SemFlowPipeline.from_pretrained("{name}", dtype=torch.float16).to("cuda")
labels = pipe.segment(Image.open("face.jpg")).labels[0]               # (H, W) class ids, 25 steps
pipe.visualize_labels(labels)[0].save("face_labels.png")
photo = pipe.synthesize(labels, generator=torch.Generator("cuda").manual_seed(0)).images[0]
photo.save("face_synthesized.png")

# without this package: the folder carries its own code
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{name}", trust_remote_code=True)
```

The equivalence of this pipeline's loop with the authors' loop (same UNet timesteps, same latents at every step,
same decoded outputs, 1 and 25 steps, both directions) is tested in this project on random weights of the same
layout (`tests/test_official_equivalence.py`); this card makes no claim about quality numbers that were not
measured with these weights.
"""
    path = Path(output_dir) / "README.md"
    path.write_text(card, encoding="utf-8")
    return path
