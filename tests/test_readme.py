"""The README's Python example runs as written, against the shipped checkpoint."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {"__name__": "__readme__"})
    street = Image.open(tmp_path / "street.png")
    assert street.size == (480, 360) and street.mode == "RGB"
    labels = np.asarray(Image.open(tmp_path / "street_labels.png"))
    assert labels.shape == (360, 480, 3)


def test_readme_code_uses_no_deprecated_diffusers_argument():
    # Issue 17 item 13: `torch_dtype=` prints a FutureWarning in the diffusers the README installs; `dtype=` does not.
    for path in [ROOT / "README.md", ROOT / "training" / "README.md", *sorted(ROOT.glob("checkpoints/*/README.md"))]:
        assert "torch_dtype=" not in path.read_text(), path


def test_the_readme_bf16_recipe_loads_without_a_warning(tmp_path):
    import warnings

    import torch

    from semflow_pipeline import SemFlowPipeline
    from semflow_tiny import tiny_pixel_pipeline

    tiny_pixel_pipeline().save_pretrained(tmp_path)
    recipe = re.search(r"`(SemFlowPipeline\.from_pretrained\(path, [^`]*)`", (ROOT / "README.md").read_text()).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = eval(recipe, {"SemFlowPipeline": SemFlowPipeline, "path": str(tmp_path), "torch": torch})
    assert pipe.unet.dtype == torch.bfloat16
