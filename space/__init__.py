"""The SemFlow Gradio Space: UI (``space.ui``), model wrapper (``space.model``), input checks (``space.inputs``),
the upload gate (``space.uploads``), the out-of-domain check (``space.ood``) and the examples (``space.examples``).

``app.py`` at the repository root is the thin entry point; tests build the app with ``build_demo``.
Names are imported lazily, so ``python -m space.examples`` / ``python -m space.ood`` do not load gradio first.
"""

__all__ = ["CSS", "SpaceModel", "build_demo", "launch", "launch_kwargs"]


def __getattr__(name):
    if name == "SpaceModel":
        from .model import SpaceModel

        return SpaceModel
    if name in ("CSS", "build_demo", "launch", "launch_kwargs"):
        from . import ui

        return getattr(ui, name)
    raise AttributeError(f"module 'space' has no attribute {name!r}")
