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
