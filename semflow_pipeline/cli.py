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


# Inputs above this many pixels are downscaled before the model (which works at a few hundred pixels anyway)
# and the results brought back to the input's size here, so a huge file costs about its own decoded size rather
# than gigabytes (the pipeline's match_input_resolution works in float at the input's size, K channels deep).
# Inputs at or below it give exactly the pipeline's results. Above PIL's decompression-bomb limit (about 179 MP)
# a file is refused with PIL's DecompressionBombError.
MAX_MODEL_INPUT_PIXELS = 4_000_000


def default_model() -> str:
    return os.environ.get("SEMFLOW_MODEL") or str(DEFAULT_MODEL)


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given, folders as their image files (sorted); raises on a path that does not exist.

    A file named twice (directly and through its folder, say) is processed once.
    """
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
    seen: set = set()
    unique = []
    for f in files:
        key = os.path.normcase(os.path.realpath(f))
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_stems(files: list[Path]) -> list[str]:
    """The output name stem of every input: its own stem, unless several inputs share one.

    ``a.png`` and ``a.jpg`` would both write ``a_labels.png``; such inputs are named by their whole file name
    instead (``a_png_labels.png``, ``a_jpg_labels.png``), which is said on stderr. Names are compared without
    case (case-insensitive file systems). A clash that remains (the same file name in two folders) is refused
    before any work, with exit code 1: nothing is overwritten silently.
    """
    stems = [f.stem for f in files]
    groups: dict = {}
    for i, s in enumerate(stems):
        groups.setdefault(s.casefold(), []).append(i)
    for idx in groups.values():
        if len(idx) > 1:
            for i in idx:
                stems[i] = files[i].name.replace(".", "_")
            print(f"semflow: {', '.join(files[i].name for i in idx)} share the name {files[idx[0]].stem!r}: their "
                  f"outputs are named {', '.join(stems[i] + '_*' for i in idx)}", file=sys.stderr)
    owner: dict = {}
    clashes = []
    for i, s in enumerate(stems):
        j = owner.setdefault(s.casefold(), i)
        if j != i:
            clashes.append(f"{files[j]} and {files[i]}")
    if clashes:
        raise SystemExit(f"semflow: these inputs would write the same output files: {'; '.join(clashes)}. Rename one "
                         "or run them into different output folders (nothing was written).")
    return stems


def resolve_model(model: str) -> str:
    """``--model``: a path that exists must be a pipeline folder; anything else is a Hub repo id (``user/repo``),
    unless it is plainly meant as a path (``./x``, ``../x``, ``/abs/x``, ``~/x``, ``a/b/c``), which is a missing
    folder."""
    path = os.path.expanduser(model)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise SystemExit(f"semflow: the model {model} is a file, not a pipeline folder "
                             "(pass --model PATH_OR_REPO_ID)")
        return path
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    local = (os.path.isabs(path) or model.startswith(("./", "../", ".\\", "..\\", "~")) or "\\" in model
             or model in (".", "..") or model.count("/") > 1 or model.endswith("/"))
    if not local:
        try:
            validate_repo_id(model)
        except HFValidationError:
            local = True
    if local:
        raise SystemExit(f"semflow: model folder not found: {model} (pass --model PATH_OR_REPO_ID)")
    return model


def load_pipeline(model: str, device):
    from semflow_pipeline import SemFlowPipeline

    model = resolve_model(model)
    try:
        pipe = SemFlowPipeline.from_pretrained(model)
    except Exception as e:  # a corrupt or incomplete checkpoint: say which and why, no traceback
        where = "" if os.path.isdir(model) else " (no such local folder, so it was tried as a Hub repo id)"
        raise SystemExit(f"semflow: could not load the model {model!r}{where}: {type(e).__name__}: {e}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def for_each_file(args, name: str, work) -> int:
    """Runs ``work(pipe, index, path, out_dir, stem)`` on this process's share of the input files.

    ``index`` is the file's position in the full list (it seeds synthesis, so results do not depend on the
    process split); ``stem`` names its outputs (``output_stems``). A file that fails is reported and skipped: one
    bad file must not lose the others' results. Returns the exit code: 1 if any file failed.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    import torch

    # Without a GPU, cpu=True makes a multi-process launch (torchrun env) join a gloo group instead of each
    # process thinking it is alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    files = expand_inputs(args.inputs)
    stems = output_stems(files)
    pipe = load_pipeline(args.model, state.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with state.split_between_processes(list(enumerate(files))) as mine:
        for i, f in tqdm(mine, desc=f"{name} [{state.process_index}]", disable=not state.is_local_main_process):
            try:
                work(pipe, i, f, out, stems[i])
            except Exception as e:
                print(f"semflow: skipped {f}: {type(e).__name__}: {e}", file=sys.stderr)
                failed += 1
        if state.num_processes > 1:
            print(f"semflow: process {state.process_index + 1}/{state.num_processes}: {len(mine)} files", file=sys.stderr)
    return 1 if failed else 0


def _fit(im, max_pixels: int, resample):
    """``im`` scaled down to at most ``max_pixels`` (aspect kept), or ``im`` itself if it is small enough."""
    w, h = im.size
    if w * h <= max_pixels:
        return im
    s = (max_pixels / (w * h)) ** 0.5
    return im.resize((max(1, int(w * s)), max(1, int(h * s))), resample)


def run_segment(args) -> int:
    import numpy as np
    import PIL.Image

    def work(pipe, i, f, out, stem):
        with PIL.Image.open(f) as im:
            im.load()
            size = im.size
            if im.size[0] * im.size[1] > MAX_MODEL_INPUT_PIXELS and im.mode in ("P", "1", "PA", "CMYK", "YCbCr"):
                im = im.convert("RGB")  # resize these with a smooth filter, not nearest
            small = _fit(im, MAX_MODEL_INPUT_PIXELS, PIL.Image.BILINEAR)
            result = pipe.segment(small, num_inference_steps=args.num_inference_steps,
                                  processing_resolution=args.processing_resolution)
        labels = result.labels[0]  # at the (possibly reduced) model input's size
        dtype = np.uint8 if labels.max() < 256 else np.uint16
        # Nearest upscaling of ids and of their colours is the same map, so colouring the small labels is exact.
        outputs = {"labels": (PIL.Image.fromarray(labels.astype(dtype)), PIL.Image.NEAREST),
                   "color": (pipe.visualize_labels(labels)[0], PIL.Image.NEAREST)}
        if args.save_confidence:
            outputs["confidence"] = (PIL.Image.fromarray((result.confidence[0] * 255).astype(np.uint8)),
                                     PIL.Image.BILINEAR)
        del result, labels
        for kind, (image, resample) in outputs.items():
            if image.size != size:
                image = image.resize(size, resample)
            image.save(out / f"{stem}_{kind}.png")

    return for_each_file(args, "segment", work)


def run_synthesize(args) -> int:
    import PIL.Image
    import torch

    def work(pipe, i, f, out, stem):
        with PIL.Image.open(f) as im:
            im.load()
            size = im.size
            small = _fit(im, MAX_MODEL_INPUT_PIXELS, PIL.Image.NEAREST)  # ids and colours: never blended
            # The pipeline brings all samples to the mask's size at once, in float: fine for a few small ones; else
            # it returns them at its processing size and each is upscaled here on its own.
            whole = size[0] * size[1] * args.num_samples <= MAX_MODEL_INPUT_PIXELS
            images = pipe.synthesize(small, num_inference_steps=args.num_inference_steps,
                                     perturbation=args.perturbation, num_images_per_mask=args.num_samples,
                                     match_input_resolution=whole,
                                     generator=torch.Generator().manual_seed(args.seed + i)).images
        for k, image in enumerate(images):
            if image.size != size:
                image = image.resize(size, PIL.Image.BILINEAR)
            image.save(out / f"{stem}_sample{k}.png")
            images[k] = None  # one full-size image at a time

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
