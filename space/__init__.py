"""The SemFlow Gradio Space: UI (``space.ui``), model wrapper (``space.model``), input checks (``space.inputs``).

``app.py`` at the repository root is the thin entry point; tests build the app with ``build_demo``.
"""

from .model import SpaceModel
from .ui import CSS, build_demo, launch

__all__ = ["CSS", "SpaceModel", "build_demo", "launch"]
