"""The ``semflow`` command line: segment, synthesize, push.

    semflow segment photo.png photos/ -o out/ [--model PATH_OR_REPO_ID] [--num-inference-steps 1]
    semflow synthesize masks/ -o out/ --num-samples 4 --seed 0 [--perturbation 0.05]
    semflow push checkpoints/semflow-camvid user/semflow-camvid [--dry-run]

Under ``accelerate launch`` the files are split across processes with accelerate's
``PartialState().split_between_processes``; every output depends only on its own input (and, for synthesis, on
the seed and the input's position in the full list), so the results do not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "semflow-camvid"
REQUIRED_REPO_FILES = ("model_index.json", "pipeline_semflow.py", "anchors.py", "scheduling_semflow.py",
                       "scheduler/scheduler_config.json", "scheduler/scheduling_semflow.py")


def default_model() -> str:
    return os.environ.get("SEMFLOW_MODEL") or str(DEFAULT_MODEL)


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given, folders as their image files (sorted); raises on a path that does not exist."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"semflow: no such file or folder: {p}")
    if not files:
        raise SystemExit("semflow: no input images found")
    return files


def load_pipeline(model: str, device):
    from semflow_pipeline import SemFlowPipeline

    if os.path.sep in model and not os.path.isdir(model):
        raise SystemExit(f"semflow: model folder not found: {model} (pass --model PATH_OR_REPO_ID)")
    try:
        pipe = SemFlowPipeline.from_pretrained(model)
    except Exception as e:  # a corrupt or incomplete checkpoint: say which and why, no traceback
        raise SystemExit(f"semflow: could not load the model {model!r}: {type(e).__name__}: {e}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def for_each_file(args, name: str, work) -> int:
    """Runs ``work(pipe, index, path, out_dir)`` on this process's share of the input files.

    ``index`` is the file's position in the full list (it seeds synthesis, so results do not depend on the
    process split). A file that fails is reported and skipped: one bad file must not lose the others' results.
    Returns the exit code: 1 if any file failed.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    import torch

    # Without a GPU, cpu=True makes a multi-process launch (torchrun env) join a gloo group instead of each
    # process thinking it is alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    files = expand_inputs(args.inputs)
    pipe = load_pipeline(args.model, state.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with state.split_between_processes(list(enumerate(files))) as mine:
        for i, f in tqdm(mine, desc=f"{name} [{state.process_index}]", disable=not state.is_local_main_process):
            try:
                work(pipe, i, f, out)
            except Exception as e:
                print(f"semflow: skipped {f}: {type(e).__name__}: {e}", file=sys.stderr)
                failed += 1
        if state.num_processes > 1:
            print(f"semflow: process {state.process_index + 1}/{state.num_processes}: {len(mine)} files", file=sys.stderr)
    return 1 if failed else 0


def run_segment(args) -> int:
    import numpy as np
    import PIL.Image

    def work(pipe, i, f, out):
        with PIL.Image.open(f) as im:
            im.load()
            result = pipe.segment(im, num_inference_steps=args.num_inference_steps,
                                  processing_resolution=args.processing_resolution)
        labels = result.labels[0]
        dtype = np.uint8 if labels.max() < 256 else np.uint16
        PIL.Image.fromarray(labels.astype(dtype)).save(out / f"{f.stem}_labels.png")
        pipe.visualize_labels(labels)[0].save(out / f"{f.stem}_color.png")
        if args.save_confidence:
            PIL.Image.fromarray((result.confidence[0] * 255).astype(np.uint8)).save(out / f"{f.stem}_confidence.png")

    return for_each_file(args, "segment", work)


def run_synthesize(args) -> int:
    import PIL.Image
    import torch

    def work(pipe, i, f, out):
        with PIL.Image.open(f) as im:
            im.load()
            images = pipe.synthesize(im, num_inference_steps=args.num_inference_steps, perturbation=args.perturbation,
                                     num_images_per_mask=args.num_samples,
                                     generator=torch.Generator().manual_seed(args.seed + i)).images
        for k, image in enumerate(images):
            image.save(out / f"{f.stem}_sample{k}.png")

    return for_each_file(args, "synthesize", work)


def repo_files(model_dir: Path) -> list[str]:
    """The files of a saved pipeline that make a complete Hub repo (no caches, no hidden files)."""
    files = sorted(
        p.relative_to(model_dir).as_posix()
        for p in model_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(model_dir).parts)
    )
    missing = [f for f in REQUIRED_REPO_FILES if f not in files]
    if missing:
        raise SystemExit(f"semflow: {model_dir} is not a saved SemFlow pipeline; missing {missing}")
    if not any(f.endswith(".safetensors") for f in files):
        raise SystemExit(f"semflow: {model_dir} has no .safetensors weights")
    if any(f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for f in files):
        raise SystemExit(f"semflow: {model_dir} holds pickle weights; save with safetensors only")
    return files


def run_push(args) -> int:
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise SystemExit(f"semflow: no such folder: {model_dir}")
    files = repo_files(model_dir)
    if "README.md" not in files:
        print("semflow: warning: no README.md model card in the folder", file=sys.stderr)
    if args.dry_run:
        print(f"Would upload {len(files)} files from {model_dir} to {args.repo_id}:")
        for f in files:
            print(f"  {f}")
        return 0
    from huggingface_hub import HfApi

    api = HfApi(token=args.token)
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    info = api.upload_folder(folder_path=str(model_dir), repo_id=args.repo_id, allow_patterns=files,
                             commit_message=args.commit_message)
    print(f"Uploaded {len(files)} files: {info}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semflow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment images (files or folders) into label-id and colour PNGs")
    seg.add_argument("inputs", nargs="+")
    seg.add_argument("-o", "--output-dir", required=True)
    seg.add_argument("--model", default=default_model(), help="pipeline folder or Hub repo id (env SEMFLOW_MODEL)")
    seg.add_argument("--num-inference-steps", type=int, default=None)
    seg.add_argument("--processing-resolution", type=int, default=None)
    seg.add_argument("--save-confidence", action="store_true")
    seg.set_defaults(func=run_segment)

    syn = sub.add_parser("synthesize", help="synthesize images from label-id or colour-coded masks")
    syn.add_argument("inputs", nargs="+")
    syn.add_argument("-o", "--output-dir", required=True)
    syn.add_argument("--model", default=default_model(), help="pipeline folder or Hub repo id (env SEMFLOW_MODEL)")
    syn.add_argument("--num-samples", type=int, default=1)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--perturbation", type=float, default=0.05)
    syn.add_argument("--num-inference-steps", type=int, default=None)
    syn.set_defaults(func=run_synthesize)

    push = sub.add_parser("push", help="upload a saved pipeline (weights, code, model card) to the Hub")
    push.add_argument("model_dir")
    push.add_argument("repo_id")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded and stop")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None)
    push.add_argument("--commit-message", default="Upload SemFlow pipeline")
    push.set_defaults(func=run_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
