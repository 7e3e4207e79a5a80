"""Anchor codec: class labels <-> anchor images, the mask end of the SemFlow ODE.

Every class ``c`` gets a fixed anchor vector ``a_c`` in the state's channel space; a label map becomes an
"anchor image" by painting each pixel with its class anchor, and a predicted state is read back by nearest
anchor. Three palettes:

- ``"paper"``: the official code's RGB palette, ``k=6`` levels, step ``s=50``:
  ``c -> s * (c // k**2, (c % k**2) // k, c % k)`` on the 0..255 scale (216 classes at most).
- ``"max_spread"``: the smallest ``L x L x L`` RGB grid with ``L**3 >= K``, spread over the whole [-1, 1] cube.
- ``"simplex"``: for pixel mode, where the mask need not be RGB. The state has ``3 + K`` channels: the image
  lives in channels 0-2 (zero in the class channels), class ``c`` is ``+1`` in channel ``3 + c`` and ``-1``
  in the other class channels (zero in the image channels). All classes are equidistant, so a blend of two
  classes is never nearest a third one.

Couplings (what sits at each end besides the image and the anchor mask):

- ``"paper"``: the mask end is the anchor image plus the finite perturbation ``U(-β, β)`` only, and the image
  end of a simplex state has zeros in its class channels. The backward ODE starts from almost one point, so
  synthesis returns about one image per mask (the paper's design).
- ``"gaussian"`` (simplex only; entropy-preserving, as in SymmFlow): the mask end's *image* channels hold
  ``N(0, I)`` noise. Labels are read from the class channels alone, so the noise never changes a label, while
  synthesis gets a whole Gaussian of starting points (one photo per noise draw). The image end keeps zeros in
  its class channels, so segmentation starts from the image itself and stays deterministic.

All anchor values are in [-1, 1]. The ignore label maps to white (RGB palettes, as in the paper) or to "no class"
(all class channels -1, simplex); it is never the answer of :meth:`AnchorCodec.decode`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

PALETTES = ("paper", "max_spread", "simplex")
COUPLINGS = ("paper", "gaussian")
Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


def check_generator(generator: Generators, count: Optional[int] = None) -> None:
    """Refuses anything but ``None``, a ``torch.Generator`` or a list of them (one per image: ``count``)."""
    hint = ("`generator` must be a torch.Generator or a list of them (one per image), as in diffusers; to seed, "
            "pass torch.Generator().manual_seed(seed) (or semflow_pipeline.make_generator(seed))")
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        if bad:
            raise ValueError(f"{hint}; the list holds {bad[0]}.")
        if count is not None and len(generator) != count:
            raise ValueError(f"Got a list of {len(generator)} generators for {count} images: pass one per image, "
                             "or a single generator.")
        return
    raise ValueError(f"{hint}; got {type(generator).__name__} {generator!r}.")


def _draw(sample: Callable, shape: tuple, generator: Generators) -> torch.Tensor:
    """``sample(shape)`` in float32 on the generator's device (CPU without one); with a list, row ``i`` of the
    batch comes from ``generator[i]``."""
    if isinstance(generator, (list, tuple)):
        check_generator(generator, shape[0])
        return torch.cat([_draw(sample, (1, *shape[1:]), g).cpu() for g in generator])
    device = generator.device if generator is not None else "cpu"
    return sample(shape, generator=generator, device=device, dtype=torch.float32)


def paper_palette(num_classes: int, levels: int = 6, step: int = 50) -> torch.Tensor:
    """The official SemFlow RGB palette, shape ``(num_classes, 3)`` in [-1, 1]."""
    if num_classes > levels**3:
        raise ValueError(
            f"The 'paper' palette (k={levels}, s={step}) holds {levels**3} classes, got num_classes={num_classes}."
        )
    c = torch.arange(num_classes)
    rgb = torch.stack([c // levels**2, (c % levels**2) // levels, c % levels], dim=1) * step
    return rgb.float() / 127.5 - 1.0


def max_spread_palette(num_classes: int, max_levels: int = 16) -> torch.Tensor:
    """RGB grid anchors with the largest spacing that fits ``num_classes``, shape ``(num_classes, 3)``."""
    levels = max(2, math.ceil(round(num_classes ** (1 / 3), 6)))
    while levels**3 < num_classes:
        levels += 1
    if levels > max_levels:
        raise ValueError(f"The 'max_spread' palette holds {max_levels**3} classes, got num_classes={num_classes}.")
    grid = torch.linspace(-1.0, 1.0, levels)
    c = torch.arange(num_classes)
    return torch.stack([grid[c // levels**2], grid[(c % levels**2) // levels], grid[c % levels]], dim=1)


def simplex_palette(num_classes: int, image_channels: int = 3) -> torch.Tensor:
    """One-hot anchors after ``image_channels`` zero channels, shape ``(num_classes, image_channels + K)``."""
    anchors = torch.full((num_classes, image_channels + num_classes), -1.0)
    anchors[:, :image_channels] = 0.0
    anchors[:, image_channels:] += 2.0 * torch.eye(num_classes)
    return anchors


class AnchorCodec:
    """Encodes label maps as anchor images and decodes states back to labels by nearest anchor.

    Args:
        palette: ``"paper"``, ``"max_spread"`` or ``"simplex"``.
        num_classes: number of classes ``K`` (ids ``0..K-1``).
        ignore_index: the label id that is not a class (e.g. void), or ``None``.
        coupling: ``"paper"`` or ``"gaussian"`` (see the module docstring); sets what :meth:`mask_end` draws.
    """

    def __init__(self, palette: str, num_classes: int, ignore_index: Optional[int] = None, coupling: str = "paper"):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if coupling not in COUPLINGS:
            raise ValueError(f"Unknown coupling {coupling!r}; choose one of {COUPLINGS}.")
        if coupling == "gaussian" and palette != "simplex":
            raise ValueError("The 'gaussian' coupling puts noise in image channels that hold no class information, "
                             "which only the 'simplex' palette has; RGB palettes need coupling='paper'.")
        self.coupling = coupling
        if palette == "paper":
            anchors = paper_palette(num_classes)
            ignore = torch.ones(3)  # white, as in the official code
        elif palette == "max_spread":
            anchors = max_spread_palette(num_classes)
            ignore = torch.ones(3)
            if (anchors == ignore).all(dim=1).any():  # the grid's last corner is white: keep void apart
                ignore = torch.zeros(3)
        elif palette == "simplex":
            anchors = simplex_palette(num_classes)
            ignore = torch.full((anchors.shape[1],), -1.0)
            ignore[:3] = 0.0
        else:
            raise ValueError(f"Unknown palette {palette!r}; choose one of {PALETTES}.")
        self.palette = palette
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.anchors = anchors  # (K, C)
        self.ignore_anchor = ignore  # (C,)
        # Image channels carry no class information: nearest-anchor search looks at the class channels only.
        self.class_channels = slice(3, None) if palette == "simplex" else slice(0, 3)
        class_anchors = anchors[:, self.class_channels]
        dist = torch.cdist(class_anchors, class_anchors)
        dist.fill_diagonal_(float("inf"))
        self.min_distance = float(dist.min())
        self._class_anchors = class_anchors  # (K, C_cls)
        self._class_sqnorm = (class_anchors**2).sum(dim=1)  # (K,)
        # (C, K + 1), channel-major: column K is the ignore anchor. encode gathers straight into (C, N*H*W), so
        # the anchor image needs no (N, H, W, C) -> (N, C, H, W) transpose copy (none at all for N = 1).
        self._encode_table = torch.cat([anchors, ignore[None]]).t().contiguous()

    @property
    def num_channels(self) -> int:
        """Channels ``C`` of the state: 3 for RGB palettes, ``3 + K`` for simplex."""
        return self.anchors.shape[1]

    @property
    def max_perturbation(self) -> float:
        """Largest β such that ``U(-β, β)`` noise in every class channel can never change a label.

        Uniform noise of half-width β has L2 norm at most ``β * sqrt(C_cls)``; it keeps every pixel nearest its
        own anchor while that norm stays below half the smallest anchor distance.
        """
        num_class_channels = self._class_anchors.shape[1]
        return 0.999 * self.min_distance / (2.0 * math.sqrt(num_class_channels))

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """Label map ``(N, H, W)`` (int) -> anchor image ``(N, C, H, W)`` in [-1, 1] (the ODE's t=1 end)."""
        labels = labels.long()
        table = self._encode_table.to(labels.device)  # (C, K + 1), built once
        valid = (labels >= 0) & (labels < self.num_classes)
        if self.ignore_index is not None:
            valid |= labels == self.ignore_index
        if not bool(valid.all()):
            unknown = labels[~valid].unique().tolist()[:10]
            raise ValueError(
                f"Unknown class ids {unknown} in the mask: expected 0..{self.num_classes - 1}"
                + (f" or the ignore index {self.ignore_index}." if self.ignore_index is not None else ".")
            )
        index = labels if self.ignore_index is None else labels.masked_fill(labels == self.ignore_index, self.num_classes)
        flat = table.index_select(1, index.reshape(-1))  # (C, N*H*W)
        return flat.view(table.shape[0], *index.shape).transpose(0, 1).contiguous()

    def lift_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image ``(N, 3, H, W)`` in [-1, 1] -> state ``(N, C, H, W)`` (the ODE's t=0 end)."""
        extra = self.num_channels - images.shape[1]
        if extra == 0:
            return images
        return torch.cat([images, images.new_zeros(images.shape[0], extra, *images.shape[2:])], dim=1)

    def image_from_state(self, state: torch.Tensor) -> torch.Tensor:
        """State ``(N, C, H, W)`` -> its image channels ``(N, 3, H, W)``."""
        return state[:, :3]

    def decode(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-anchor read-back.

        Args:
            state: ``(N, C, H, W)``, a predicted anchor image, or only its class channels ``(N, C_cls, H, W)``
                (``C_cls = K`` for simplex, 3 for RGB palettes).

        Returns:
            labels ``(N, H, W)`` (int64) and confidence ``(N, H, W)`` in [0, 1]: the margin between the
            second-nearest and nearest anchor distances over the smallest anchor distance (1 at an anchor,
            0 half-way between two).
        """
        num_class_channels = self._class_anchors.shape[1]
        if state.shape[1] == self.num_channels:
            x = state[:, self.class_channels].float()
        elif state.shape[1] == num_class_channels:
            x = state.float()
        else:
            raise ValueError(f"`state` must have {self.num_channels} channels (or its {num_class_channels} class "
                             f"channels); got shape {tuple(state.shape)}.")
        if self.palette == "simplex":
            # Simplex class anchors are a_c = 2 e_c - 1, so |x - a_c|^2 = s - 4 x_c with s = |x|^2 + 2 sum(x) + K:
            # the two nearest anchors are the two largest class values (no (N, K, H, W) distance map needed).
            v1, v2, labels = _top2(x)
            s = (x * x).sum(dim=1) + 2 * x.sum(dim=1) + self.num_classes
            d1, d2 = (s - 4 * v1).clamp_min(0).sqrt(), (s - 4 * v2).clamp_min(0).sqrt()
        else:
            anchors = self._class_anchors.to(x.device)
            # Squared distances without materialising (N, K, C, H, W): |x|^2 - 2 x.a + |a|^2.
            dot = torch.einsum("nchw,kc->nkhw", x, anchors)
            sq = (x**2).sum(dim=1, keepdim=True) - 2 * dot + self._class_sqnorm.to(x.device)[None, :, None, None]
            v1, v2, labels = _top2(sq.neg_())
            d1, d2 = v1.neg().clamp_min(0).sqrt(), v2.neg().clamp_min(0).sqrt()
        confidence = ((d2 - d1) / self.min_distance).clamp(0.0, 1.0)
        return labels, confidence

    def perturb(self, anchor_images: torch.Tensor, perturbation: float, generator: Generators = None) -> torch.Tensor:
        """Finite perturbation: ``anchor + U(-β, β)`` per channel, β = ``perturbation`` (checked against the palette).

        ``generator``: one ``torch.Generator`` for the whole batch, or a list with one per image (image ``i``'s noise
        is then what a batch of one would draw from ``generator[i]``). Noise is drawn on the generator's device.
        """
        self.check_perturbation(perturbation)
        check_generator(generator, anchor_images.shape[0] if isinstance(generator, (list, tuple)) else None)
        noise = _draw(torch.rand, tuple(anchor_images.shape), generator)
        noise = (2 * noise - 1).to(anchor_images.device, anchor_images.dtype)
        return anchor_images + perturbation * noise

    def mask_end(
        self,
        anchor_images: torch.Tensor,
        perturbation: float,
        generator: Generators = None,
        noise_prob: float = 1.0,
    ) -> torch.Tensor:
        """The ODE's t=1 state for anchor images ``(N, C, H, W)``: the finite perturbation, and with the
        ``"gaussian"`` coupling ``N(0, I)`` noise in the image channels 0-2. Both are drawn from ``generator`` (one
        for the batch, or a list with one per image), the perturbation first.

        ``noise_prob`` < 1 (training only) gives each sample the noise with that probability and zeros (the
        paper's end) otherwise: a mixture coupling whose zero branch is exactly the path that segmentation
        integrates (image channels fading linearly to 0), so more segmentation steps stay in distribution,
        while synthesis starts from the Gaussian branch.
        """
        check_generator(generator, anchor_images.shape[0] if isinstance(generator, (list, tuple)) else None)
        state = self.perturb(anchor_images, perturbation, generator) if perturbation > 0 else anchor_images.clone()
        if self.coupling == "gaussian":
            n, _, h, w = anchor_images.shape
            noise = _draw(torch.randn, (n, 3, h, w), generator)
            if noise_prob < 1.0:
                noise = noise * (_draw(torch.rand, (n, 1, 1, 1), generator) < noise_prob)
            state[:, :3] = noise.to(state.device, state.dtype)
        return state

    def check_perturbation(self, perturbation: float) -> None:
        if not 0.0 <= perturbation <= self.max_perturbation:
            raise ValueError(
                f"`perturbation` must be in [0, {self.max_perturbation:.4f}] for the {self.palette!r} palette with "
                f"{self.num_classes} classes (below half the smallest anchor distance, so no pixel changes class); "
                f"got {perturbation}."
            )


def _top2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest and second-largest values over dim 1 of ``(N, K, H, W)`` and the largest one's index.

    ``max`` + masking the winner + ``amax`` is several times faster on CPU than ``topk``/``argmax`` over a
    non-innermost dimension (measured in benchmarks/inference.py).
    """
    v1, index = x.max(dim=1, keepdim=True)
    v2 = x.scatter(1, index, float("-inf")).amax(dim=1)  # K >= 2 (AnchorCodec refuses fewer classes)
    return v1[:, 0], v2, index[:, 0]
