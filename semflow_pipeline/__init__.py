"""SemFlow: semantic segmentation and semantic image synthesis with one rectified-flow ODE."""

from .anchors import AnchorCodec, max_spread_palette, paper_palette, simplex_palette
from .pipeline_semflow import SemFlowPipeline, SemFlowSegmentationOutput, SemFlowSynthesisOutput
from .scheduling_semflow import SemFlowScheduler, SemFlowSchedulerOutput
from .unet_semflow import SemFlowUNet2DModel

__version__ = "0.1.0"

__all__ = [
    "AnchorCodec",
    "SemFlowPipeline",
    "SemFlowScheduler",
    "SemFlowSchedulerOutput",
    "SemFlowSegmentationOutput",
    "SemFlowSynthesisOutput",
    "SemFlowUNet2DModel",
    "max_spread_palette",
    "paper_palette",
    "simplex_palette",
]
