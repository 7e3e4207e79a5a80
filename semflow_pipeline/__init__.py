"""SemFlow: semantic segmentation and semantic image synthesis with one rectified-flow ODE.

The names below are imported on first use (PEP 562), as diffusers and transformers do, so that ``import
semflow_pipeline.cli`` and ``semflow --help`` do not pay for torch and diffusers.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "AnchorCodec": "anchors",
    "max_spread_palette": "anchors",
    "paper_palette": "anchors",
    "simplex_palette": "anchors",
    "SemFlowPipeline": "pipeline_semflow",
    "SemFlowSegmentationOutput": "pipeline_semflow",
    "SemFlowSynthesisOutput": "pipeline_semflow",
    "SemFlowScheduler": "scheduling_semflow",
    "SemFlowSchedulerOutput": "scheduling_semflow",
    "SemFlowUNet2DModel": "unet_semflow",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .anchors import AnchorCodec, max_spread_palette, paper_palette, simplex_palette
    from .pipeline_semflow import SemFlowPipeline, SemFlowSegmentationOutput, SemFlowSynthesisOutput
    from .scheduling_semflow import SemFlowScheduler, SemFlowSchedulerOutput
    from .unet_semflow import SemFlowUNet2DModel


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups are plain attribute reads
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
