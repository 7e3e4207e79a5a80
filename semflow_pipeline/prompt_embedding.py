"""A stored text embedding, so that an SD-style UNet gets its conditioning without a text encoder at run time.

SemFlow's latent models (the paper's, and the authors' released checkpoint) feed Stable Diffusion's UNet the
embedding of the empty prompt, always the same ``(1, 77, 768)`` tensor. Carrying a 123M-parameter CLIP text encoder
and its tokenizer only to recompute that constant on every load is waste, so the converter computes it once and
saves it as a pipeline component of its own (``empty_prompt_embedding/``: ``config.json`` +
``diffusion_pytorch_model.safetensors``), like any diffusers model: ``save_pretrained`` / ``from_pretrained``,
``torch_dtype`` and device moves apply to it.
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class SemFlowPromptEmbedding(ModelMixin, ConfigMixin):
    """Holds one precomputed prompt embedding ``(1, sequence_length, embedding_dim)``.

    Args:
        sequence_length: tokens of the embedding (77 for CLIP).
        embedding_dim: its width, the UNet's ``cross_attention_dim`` (768 for SD-1.5).
        prompt: the text it embeds (``""`` for SemFlow), recorded for the reader.
        source: where it was computed from (e.g. the text encoder's folder or Hub id), recorded for the reader.
    """

    @register_to_config
    def __init__(self, sequence_length: int = 77, embedding_dim: int = 768, prompt: str = "",
                 source: Optional[str] = None):
        super().__init__()
        # A frozen parameter (not a buffer), so that diffusers' loaders and dtype/device moves treat it as weights.
        self.prompt_embeds = torch.nn.Parameter(torch.zeros(1, sequence_length, embedding_dim), requires_grad=False)

    @classmethod
    def from_embedding(cls, embedding: torch.Tensor, prompt: str = "", source: Optional[str] = None):
        """Wraps a ``(1, L, D)`` (or ``(L, D)``) embedding tensor."""
        if embedding.ndim == 2:
            embedding = embedding[None]
        if embedding.ndim != 3 or embedding.shape[0] != 1:
            raise ValueError(f"expected a (1, L, D) prompt embedding; got shape {tuple(embedding.shape)}.")
        module = cls(sequence_length=embedding.shape[1], embedding_dim=embedding.shape[2], prompt=prompt, source=source)
        with torch.no_grad():
            module.prompt_embeds.copy_(embedding.detach().float())
        return module

    def forward(self, device: Optional[torch.device] = None) -> torch.Tensor:
        """The embedding ``(1, L, D)``, on ``device`` if given."""
        embeds = self.prompt_embeds.detach()
        return embeds if device is None else embeds.to(device)
