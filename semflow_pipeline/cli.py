"""The ``semflow`` command line: segment, synthesize, push.

    semflow segment photo.png photos/ -o out/ [--model PATH_OR_REPO_ID] [--num-inference-steps 1]
    semflow synthesize masks/ -o out/ --num-samples 4 --seed 0 [--perturbation 0.05]
    semflow push checkpoints/semflow-camvid user/semflow-camvid [--dry-run] [--private] [--revision B | --create-pr]

Under ``accelerate launch`` the files are split across processes with accelerate's
``PartialState().split_between_processes``; every output depends only on its own input (and, for synthesis, on
the seed and the input's position in the full list), so the results do not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "semflow-camvid"
REQUIRED_REPO_FILES = ("model_index.json", "pipeline_semflow.py", "anchors.py", "image_processing.py",
                       "scheduling_semflow.py", "scheduler/scheduler_config.json", "scheduler/scheduling_semflow.py")


# Inputs above this many pixels are downscaled before the model (which works at a few hundred pixels anyway)
# and the results brought back to the input's size here, so a huge file costs about its own decoded size rather
# than gigabytes (the pipeline's match_input_resolution works in float at the input's size, K channels deep).
# Inputs at or below it give exactly the pipeline's results. Above PIL's decompression-bomb limit (about 179 MP)
# a file is refused with PIL's DecompressionBombError.
MAX_MODEL_INPUT_PIXELS = 4_000_000


def _number(kind, minimum, what: str):
    """An argparse ``type`` that refuses, at parse time (before anything is loaded), a value that is not ``kind`` or
    is below ``minimum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value in (float("inf"), float("-inf")) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


positive_int = _number(int, 1, "a positive integer")
non_negative_int = _number(int, 0, "a non-negative integer (0 = native)")
non_negative_float = _number(float, 0.0, "a non-negative number")


def check_limits(args) -> None:
    """Refuses, before the model is loaded, what every model would refuse for any file: values above the pipeline's
    cost bounds (``SemFlowPipeline.max_*``), named with how to raise them."""
    from semflow_pipeline import SemFlowPipeline

    for option, attr, value in (("--num-inference-steps", "max_num_inference_steps",
                                 getattr(args, "num_inference_steps", None)),
                                ("--processing-resolution", "max_processing_resolution",
                                 getattr(args, "processing_resolution", None)),
                                ("--num-samples", "max_num_images_per_mask", getattr(args, "num_samples", None))):
        limit = getattr(SemFlowPipeline, attr)
        if value is not None and limit is not None and value > limit:
            raise SystemExit(f"semflow: {option} {value} is above the pipeline's limit of {limit} "
                             f"(SemFlowPipeline.{attr}); nothing was loaded or written")


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
            renamed = [i for i in idx if sum(stems[j].casefold() == stems[i].casefold() for j in idx) == 1]
            if len(renamed) > 1:  # only the renames that do tell the outputs apart; a clash left is refused below
                print(f"semflow: {', '.join(files[i].name for i in renamed)} share the name "
                      f"{files[renamed[0]].stem!r}: their outputs are named "
                      f"{', '.join(stems[i] + '_*' for i in renamed)}", file=sys.stderr)
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
    import torch

    from semflow_pipeline import SemFlowPipeline

    model = resolve_model(model)
    try:
        pipe = SemFlowPipeline.from_pretrained(model)
    except Exception as e:  # a corrupt or incomplete checkpoint: say which and why, no traceback
        where = "" if os.path.isdir(model) else " (no such local folder, so it was tried as a Hub repo id)"
        raise SystemExit(f"semflow: could not load the model {model!r}{where}: {type(e).__name__}: {e}")
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.to(memory_format=torch.channels_last)  # faster convolutions, same outputs (see space/model.py)
    return pipe.to(device)


def make_output_dir(path: str) -> Path:
    """``-o OUT``: the output folder, created if missing, before any model is loaded. An existing file (``-o
    result.png``), a file on the way, or a folder that cannot be created is a one-line error, not a traceback."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"semflow: -o {path}: that is an existing file, not a folder; -o names the output folder "
                         "(the outputs are written into it as <name>_labels.png, <name>_sample0.png, ...)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"semflow: -o {path}: cannot create the output folder: {e.strerror or e}")
    return out


def for_each_file(args, name: str, work) -> int:
    """Runs ``work(pipe, index, path, out_dir, stem)`` on this process's share of the input files.

    ``index`` is the file's position in the full list (it seeds synthesis, so results do not depend on the
    process split); ``stem`` names its outputs (``output_stems``). A file that fails is reported and skipped: one
    bad file must not lose the others' results. Returns the exit code: 1 if any file failed.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    import torch

    files = expand_inputs(args.inputs)
    stems = output_stems(files)
    check_limits(args)
    # Without a GPU, cpu=True makes a multi-process launch (torchrun env) join a gloo group instead of each
    # process thinking it is alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    out = make_output_dir(args.output_dir)
    pipe = load_pipeline(args.model, state.device)
    failed = 0
    with state.split_between_processes(list(enumerate(files))) as mine:
        for i, f in tqdm(mine, desc=f"{name} [{state.process_index}]", disable=not state.is_local_main_process):
            try:
                work(pipe, i, f, out, stems[i])
            except Exception as e:
                tqdm.write(f"semflow: skipped {f}: {type(e).__name__}: {e}", file=sys.stderr)  # above the bar
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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")  # unpickling runs code
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                           "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def repo_files(model_dir: Path) -> list[str]:
    """The files of a saved pipeline that make a complete Hub repo (no caches, no hidden files).

    Refuses a folder with a symlink that leads out of it (its target would be uploaded) or a dangling one, a
    missing required file, no ``.safetensors`` weights, or pickle-based weights.
    """
    root = model_dir.resolve()
    files: list[str] = []
    bad_links: list[str] = []
    special: list[str] = []
    for dirpath, dirnames, filenames in os.walk(model_dir):  # followlinks=False: never descends a linked folder
        here = Path(dirpath)
        rel_dir = here.relative_to(model_dir)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for d in dirnames:
            if (here / d).is_symlink():
                bad_links.append(f"{(rel_dir / d).as_posix()} -> {os.readlink(here / d)} (a linked folder)")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path, rel = here / name, (rel_dir / name).as_posix()
            kind = _special_kind(path)
            if kind:
                special.append(f"{rel} ({kind})")
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.is_file():
                    bad_links.append(f"{rel} -> {os.readlink(path)} (dangling)")
                    continue
                if not target.is_relative_to(root):
                    bad_links.append(f"{rel} -> {os.readlink(path)} (outside the folder)")
                    continue
            files.append(rel)
    if special:
        raise SystemExit(f"semflow: {model_dir} holds files that are not regular files, which cannot be uploaded "
                         "(reading a named pipe can block forever): remove them:\n  " + "\n  ".join(special))
    if bad_links:
        raise SystemExit(f"semflow: {model_dir} has symlinks that cannot be uploaded safely; replace them with the "
                         "files themselves:\n  " + "\n  ".join(bad_links))
    files.sort()
    missing = [f for f in REQUIRED_REPO_FILES if f not in files]
    if missing:
        raise SystemExit(f"semflow: {model_dir} is not a saved SemFlow pipeline; missing {missing}")
    if not any(f.endswith(".safetensors") for f in files):
        raise SystemExit(f"semflow: {model_dir} has no .safetensors weights")
    pickles = []
    for f in files:
        why = "its name" if f.lower().endswith(PICKLE_SUFFIXES) else pickle_content(model_dir / f)
        if why:
            pickles.append(f"{f} ({why})")
    if pickles:
        raise SystemExit(f"semflow: {model_dir} holds pickle-based files (loading them can run code); save the "
                         "weights with safetensors only and remove these files:\n  " + "\n  ".join(pickles))
    return files


def _special_kind(path: Path) -> str | None:
    """What ``path`` (or the file a symlink leads to) is when it is not a regular file: named pipe, socket,
    device; None for a regular file (or a symlink to one, or a dangling symlink: reported elsewhere)."""
    import stat

    try:
        mode = path.stat().st_mode  # follows a symlink: a link to a pipe is a pipe
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


PICKLE_SCAN_BYTES = 64 * 2**20  # a pickle that does not reach STOP within this many bytes is read as not a pickle


def _is_pickle_stream(f) -> bool:
    """Whether the stream ``f`` starts with a complete pickle: every opcode valid, up to STOP (any protocol, also
    protocol 0/1 pickles that have no header). Text, images, JSON, safetensors fail at their first bytes."""
    import pickletools

    try:
        for op, _, pos in pickletools.genops(f):
            if op.name == "STOP":
                return True
            if pos is not None and pos > PICKLE_SCAN_BYTES:
                return False
    except Exception:  # noqa: BLE001 - any parse error: not a pickle
        return False
    return False


def _pickle_in_bytes(data: bytes, depth: int = 0) -> str | None:
    import io
    import zipfile

    if depth > 3:
        return None
    if data[:6] == b"\x93NUMPY":  # numpy .npy: an object dtype is stored as a pickle
        try:
            import numpy as np

            bio = io.BytesIO(data)
            version = np.lib.format.read_magic(bio)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read(bio, max_header_size=2**20)
            if np.dtype(dtype).hasobject:
                return "a numpy array of Python objects, stored as a pickle"
        except Exception:  # noqa: BLE001
            return "an unreadable numpy header"
        return None
    for magic, module, what in ((b"\x1f\x8b", "gzip", "gzip"), (b"BZh", "bz2", "bz2"),
                                (b"\xfd7zXZ\x00", "lzma", "xz")):
        if data.startswith(magic):
            import importlib

            try:
                inner = importlib.import_module(module).decompress(data)
            except Exception:  # noqa: BLE001 - a truncated stream: judge what could be read
                inner = b""
            why = _pickle_in_bytes(inner[:PICKLE_SCAN_BYTES], depth + 1)
            return f"{what}-compressed: {why}" if why else None
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = z.namelist()
                if any(n.endswith("data.pkl") for n in names) and any("/data/" in n or n.startswith("data/") for n in names):
                    return "a torch.save zip archive (data.pkl inside)"
                for info in z.infolist():
                    if info.is_dir():
                        continue
                    with z.open(info) as member:
                        why = _pickle_in_bytes(member.read(PICKLE_SCAN_BYTES), depth + 1)
                    if why:
                        return f"a zip archive whose {info.filename} is {why}"
        except Exception:  # noqa: BLE001
            return None
        return None
    import io as _io

    if _is_pickle_stream(_io.BytesIO(data)):
        return "a pickle" if not data.startswith(b"\x80") or len(data) < 2 else f"a pickle (protocol {data[1]})"
    return None


def pickle_content(path: Path) -> str | None:
    """Why ``path`` holds a pickle, judged by its bytes, not its name: a pickle stream (any protocol), torch.save's
    zip layout, a numpy object array, or one of these inside a zip / gzip / bz2 / xz file; None otherwise."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0)
        if head.startswith((b"PK", b"\x1f\x8b", b"BZh", b"\xfd7zXZ")) or head[:6] == b"\x93NUMPY":
            if path.stat().st_size > 4 * PICKLE_SCAN_BYTES:
                return _pickle_in_bytes(f.read(PICKLE_SCAN_BYTES))
            return _pickle_in_bytes(f.read())
        return "a pickle" if _is_pickle_stream(f) else None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header, offsets and size checked), or None."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, too short for a safetensors file"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > min(size - 8, 100 * 2**20):
            return f"header length {n} does not fit the file ({size} bytes): truncated or not safetensors"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            return f"unreadable header ({e})"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    data, end = size - 8 - n, 0
    spans = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in t["data_offsets"])
            shape, dtype = [int(x) for x in t["shape"]], t["dtype"]
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} has a malformed header entry"
        if not 0 <= begin <= stop:
            return f"tensor {name!r} has bad offsets {[begin, stop]}"
        if stop > data:
            return f"truncated: tensor {name!r} ends at byte {stop} of the data, but the file holds {data}"
        if dtype in SAFETENSORS_DTYPE_BYTES and stop - begin != math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]:
            return f"tensor {name!r} ({dtype} {shape}) does not match its {stop - begin} bytes"
        end = max(end, stop)
        spans.append((begin, stop, name))
    spans.sort()
    for (_, stop_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b != stop_a:
            return f"tensors {a!r} and {b!r} {'overlap' if begin_b < stop_a else 'leave a gap'} in the data"
    if end != data:
        return f"the data section holds {data} bytes but the tensors cover {end}"
    return None


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def _expected_state(component_dir: Path, library: str, class_name: str) -> tuple[dict, list]:
    """``({name: shape}, [patterns of keys a model may leave out or carry extra])`` of the model that
    ``model_index.json`` names for this component, built from its config on the meta device (no weights, no code
    from the folder: only diffusers / transformers model classes are accepted)."""
    import importlib

    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), class_name, None)
    diffusers_model = library == "diffusers" or library.startswith("semflow_pipeline.")  # ours: diffusers models
    if diffusers_model:
        from diffusers import ModelMixin as Base
    else:
        from transformers import PreTrainedModel as Base
    if not isinstance(cls, type) or not issubclass(cls, Base):
        raise ValueError(f"{library}.{class_name} is not a {Base.__name__} model class")
    with init_empty_weights():
        if diffusers_model:
            model = cls.from_config(cls.load_config(str(component_dir)))
        else:
            from transformers import AutoConfig

            model = cls(AutoConfig.from_pretrained(str(component_dir)))
    optional = []
    for attr in ("_keys_to_ignore_on_load_missing", "_keys_to_ignore_on_load_unexpected", "_keys_to_ignore_on_save",
                 "_tied_weights_keys"):
        value = getattr(model, attr, None) or []
        optional += list(value.keys()) if isinstance(value, dict) else list(value)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, optional


def _package_component_module(spec) -> bool:
    """Whether a ``model_index.json`` entry names one of this package's model classes with its own module file."""
    from semflow_pipeline import pipeline_semflow

    return (isinstance(spec, list) and len(spec) == 2
            and pipeline_semflow.PACKAGE_COMPONENT_CODE.get(spec[1]) == spec[0])


def weight_problems(model_dir: Path, files: list[str]) -> list[str]:
    """Every weight file of every model component (``model_index.json``) against the model its config builds:
    a missing, unexpected or reshaped tensor, and any NaN / inf, is a problem. diffusers only warns about a
    missing tensor (it initialises it randomly), so a tampered header that renames one would load and push."""
    import re

    import torch
    from safetensors import safe_open

    try:
        index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"model_index.json: unreadable ({e})"]
    problems = []
    for comp, spec in sorted(index.items()):
        if comp.startswith("_") or not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)
                                        and isinstance(spec[1], str)):
            continue
        weights = [f for f in files if f.startswith(comp + "/") and f.count("/") == 1 and f.endswith(".safetensors")]
        library = spec[0]
        if _package_component_module(spec):  # a model of this package's, saved with its code: built from ours
            library = f"semflow_pipeline.{spec[0]}"
        elif spec[0] not in ("diffusers", "transformers"):
            continue  # the scheduler, a tokenizer: no weights
        if not weights:
            problems.append(f"{comp}: no .safetensors weights")
            continue
        try:
            expected, optional = _expected_state(model_dir / comp, library, spec[1])
        except Exception as e:  # noqa: BLE001
            problems.append(f"{comp}: cannot build {library}.{spec[1]} from its config ({type(e).__name__}: {e})")
            continue
        groups: list[list[str]] = []
        sharded: set = set()
        for f in files:
            if f.startswith(comp + "/") and f.endswith(".safetensors.index.json"):
                try:
                    shards = sorted(set(json.loads((model_dir / f).read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError, AttributeError) as e:
                    problems.append(f"{f}: unreadable shard index ({e})")
                    continue
                group = [f"{comp}/{x}" for x in shards]
                missing_shards = [g for g in group if g not in files]
                if missing_shards:
                    problems.append(f"{f}: shards {missing_shards} are missing")
                    continue
                groups.append(group)
                sharded.update(group)
        groups += [[w] for w in weights if w not in sharded]
        for group in groups:
            header, where = {}, {}
            for w in group:
                for name, entry in _safetensors_header(model_dir / w).items():
                    header[name], where[name] = entry, w
            label = group[0] if len(group) == 1 else f"{comp} (sharded)"
            ok = lambda k: any(re.search(p, k) for p in optional)  # noqa: E731
            missing = sorted(k for k in expected if k not in header and not ok(k))
            unexpected = sorted(k for k in header if k not in expected and not ok(k))
            reshaped = sorted(f"{k} {list(header[k]['shape'])} (the model has {list(expected[k])})" for k in header
                              if k in expected and tuple(header[k]["shape"]) != expected[k])
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
                if keys:
                    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
                    problems.append(f"{label}: {what} tensors (the model built from {comp}/config.json "
                                    f"expects otherwise): {', '.join(keys[:8])}{more}")
            bad = []
            for w in group:
                try:
                    with safe_open(str(model_dir / w), framework="pt") as st:
                        for name in st.keys():
                            t = st.get_tensor(name)
                            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                                bad.append(name)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{w}: unreadable ({type(e).__name__}: {e})")
            if bad:
                problems.append(f"{label}: non-finite values (NaN or inf) in {', '.join(sorted(bad)[:8])}")
    return problems


def code_differences(model_dir: Path, files: list[str]) -> list[str]:
    """How the folder's code differs from this package's own: a ``.py`` (or compiled) file that is not one of the
    copies ``write_remote_code`` writes, a copy whose bytes differ, or a ``model_index.json`` that points a component
    at another module. Empty when ``trust_remote_code=True`` would run exactly this package's code."""
    from semflow_pipeline import pipeline_semflow

    here = Path(pipeline_semflow.__file__).resolve().parent
    ours = {target: here / name for name, targets in pipeline_semflow.REMOTE_CODE_FILES.items() for target in targets}
    diffs = []
    try:
        index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = None
    allowed = {"_class_name": ["pipeline_semflow", "SemFlowPipeline"], "scheduler": ["scheduling_semflow", "SemFlowScheduler"]}
    for key, spec in (index or {}).items():
        if _package_component_module(spec):  # saved with this package's own model code (unet/unet_semflow.py)
            allowed[key] = spec
            ours[f"{key}/{spec[0]}.py"] = here / f"{spec[0]}.py"
    for f in files:
        if f.lower().endswith((".py", ".pyc", ".pyo", ".pyd", ".so", ".pyw", ".pth")):
            if f not in ours:
                diffs.append(f"{f} (not part of SemFlow's code)")
            elif (model_dir / f).read_bytes() != ours[f].read_bytes():
                diffs.append(f"{f} (differs from {ours[f].name} of semflow_pipeline {_package_version()})")
    if index is None:
        return diffs + ["model_index.json (unreadable)"]
    for key, spec in index.items():
        if key in allowed:
            if spec != allowed[key]:
                diffs.append(f"model_index.json {key} = {spec} (expected {allowed[key]})")
        elif (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], str)
              and spec[0] not in ("diffusers", "transformers")):
            diffs.append(f"model_index.json {key} = {spec} (a module of the folder's own)")
    return diffs


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("semflow-pipeline")
    except Exception:  # noqa: BLE001
        return "(this checkout)"


_ISOLATED_LOAD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from diffusers import DiffusionPipeline
from diffusers.utils import logging
logging.disable_progress_bar()
from semflow_pipeline import SemFlowPipeline
for name, load in (("SemFlowPipeline.from_pretrained", lambda: SemFlowPipeline.from_pretrained(sys.argv[1])),
                   ("DiffusionPipeline.from_pretrained(..., trust_remote_code=True)",
                    lambda: DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True))):
    try:
        load()
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)
"""


def check_loads(model_dir: Path, files: list[str], isolated: bool = False) -> None:
    """Loads exactly ``files`` (copied to a scratch folder, as the Hub repo will hold them) both ways users load a
    Hub repo: ``SemFlowPipeline.from_pretrained`` and ``DiffusionPipeline.from_pretrained`` with trust_remote_code.

    ``isolated`` (the folder's code is not this package's): both loads run in a separate Python process, in the
    scratch copy, offline, with a scratch HF_HOME and no Hub token in its environment, so the folder's code cannot
    reach the token or the user's Hugging Face cache. It is still code running on this machine: ``--dry-run``
    never gets here with such a folder.
    """
    import tempfile

    if isolated:
        import subprocess

        with tempfile.TemporaryDirectory(prefix="semflow-push-") as tmp:
            repo = Path(tmp) / "repo"
            for f in files:
                (repo / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(model_dir / f, repo / f)
            env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "HF_HOME": str(Path(tmp) / "hf"),
                   "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONDONTWRITEBYTECODE": "1"}
            package_parent = str(Path(__file__).resolve().parents[1])
            try:
                done = subprocess.run([sys.executable, "-I", "-c", _ISOLATED_LOAD, str(repo), package_parent],
                                      cwd=tmp, env=env, capture_output=True, text=True, timeout=900,
                                      stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"semflow: loading {model_dir} (in a separate process) took over 900 s; refused")
            if done.returncode:
                tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
                raise SystemExit(f"semflow: {model_dir} does not load (checked in a separate process): {tail}")
        return

    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from semflow_pipeline import SemFlowPipeline

    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="semflow-push-") as tmp:
            for f in files:
                (Path(tmp) / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(model_dir / f, Path(tmp) / f)
            for name, load in (("SemFlowPipeline.from_pretrained", lambda: SemFlowPipeline.from_pretrained(tmp)),
                               ("DiffusionPipeline.from_pretrained(..., trust_remote_code=True)",
                                lambda: DiffusionPipeline.from_pretrained(tmp, trust_remote_code=True))):
                try:
                    load()
                except Exception as e:  # noqa: BLE001 - any failure means the uploaded repo would not load
                    raise SystemExit(f"semflow: {model_dir} does not load with {name}: {type(e).__name__}: {e}")
    finally:
        if bars:
            diffusers_logging.enable_progress_bar()


def validate_push_folder(model_dir: Path, repo_id: str, dry_run: bool = False) -> list[str]:
    """Every check of ``semflow push`` (with or without --dry-run); returns the files to upload.

    No check runs the folder's own code, except the trust_remote_code load when the folder's code is not this
    package's: refused under ``--dry-run``, run in a separate process (and said so) by a real push."""
    if not model_dir.is_dir():
        raise SystemExit(f"semflow: no such folder: {model_dir}")
    files = repo_files(model_dir)
    broken = [f"{f}: {why}" for f in files if f.endswith(".safetensors")
              for why in [safetensors_problem(model_dir / f)] if why]
    if broken:
        raise SystemExit("semflow: corrupt safetensors weights:\n  " + "\n  ".join(broken))
    problems = weight_problems(model_dir, files)
    if problems:
        raise SystemExit("semflow: the weights do not match the model their config describes (a loader would "
                         "initialise or drop these tensors silently):\n  " + "\n  ".join(problems))
    custom = code_differences(model_dir, files)
    if custom and dry_run:
        raise SystemExit(
            f"semflow: {model_dir}'s code is not this package's:\n  " + "\n  ".join(custom) + "\n--dry-run does "
            "not execute a folder's own code, and its trust_remote_code=True load check would, so it was not run "
            "(every other check passed). If the folder is yours, refresh its code with `python -c \"from "
            "semflow_pipeline.pipeline_semflow import write_remote_code as w; w('DIR')\"`; if you wrote these "
            "changes on purpose, push without --dry-run: the load check then runs in a separate process, offline "
            "and without your Hub token.")
    if custom:
        print(f"semflow: {model_dir}'s code is not this package's ({'; '.join(custom)}): its load checks run in a "
              "separate process, offline, without your Hub token", file=sys.stderr)
    check_loads(model_dir, files, isolated=bool(custom))
    if "README.md" not in files:
        print("semflow: warning: no README.md model card in the folder", file=sys.stderr)
    elif repo_id not in (model_dir / "README.md").read_text(encoding="utf-8", errors="replace"):
        print(f"semflow: warning: the model card's usage code does not load {repo_id!r}; regenerate the card with "
              f"`python training/model_card.py {model_dir} --repo-id {repo_id}`", file=sys.stderr)
    return files


def _hub_error(e: Exception) -> str:
    """A one-paragraph reason for a failed Hub call, with what to do for the usual causes."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    text = " ".join(str(e).split())
    text = text if len(text) <= 400 else text[:400] + "..."
    hint = {401: "the token is missing or invalid: run `hf auth login` or set HF_TOKEN",
            403: "the token cannot write there: use a write token, and check the user or organisation name",
            404: "the repo or revision was not found (check the repo id and --revision)"}.get(status)
    if type(e).__name__ == "OfflineModeIsEnabled" or "offline mode" in text.lower():
        hint = "HF_HUB_OFFLINE is set: unset it to push"
    return f"{type(e).__name__}: {text}" + (f" ({hint})" if hint else "")


def run_push(args) -> int:
    model_dir = Path(args.model_dir)
    if args.create_pr and args.revision not in (None, "main"):
        raise SystemExit("semflow: --create-pr opens a pull request against main; leave out --revision "
                         "(to add a commit to an open pull request, use --revision refs/pr/N without --create-pr)")
    files = validate_push_folder(model_dir, args.repo_id, dry_run=args.dry_run)
    where = (args.repo_id + (f" (branch {args.revision})" if args.revision else "")
             + (" as a pull request" if args.create_pr else ""))
    if args.dry_run:
        print(f"Would upload {len(files)} files from {model_dir} to {where}:")
        for f in files:
            print(f"  {f}")
        print("semflow: checked: the files load as a SemFlow pipeline (also with trust_remote_code=True: the "
              "folder's code is byte-identical to this package's, so no code of the folder's own was run), every "
              "safetensors header matches its file and the model's expected tensors (names, shapes, finite "
              "values), no file is a pickle by its content, no special file, no symlink leads out of the folder. "
              + ("Remote files not listed here would be kept." if args.keep_remote_files else
                 "Remote files not listed here would be deleted (--keep-remote-files keeps them)."), file=sys.stderr)
        return 0
    from huggingface_hub import HfApi, get_token

    token = args.token
    if token:
        print("semflow: warning: --token is deprecated: a token on the command line lands in your shell history; "
              "set HF_TOKEN or run `hf auth login` instead", file=sys.stderr)
    else:
        try:
            token = get_token()
        except Exception as e:  # noqa: BLE001 - e.g. a failed OIDC exchange
            print(f"semflow: push to {args.repo_id} failed: {_hub_error(e)}", file=sys.stderr)
            return 1
        if not token:
            print("semflow: not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN to a write "
                  "token", file=sys.stderr)
            return 1
    api = HfApi(token=token)
    step = "create the repo"
    try:
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        if args.private:  # create_repo leaves an existing repo's visibility as it is
            step = "make the repo private"
            update = getattr(api, "update_repo_settings", None) or api.update_repo_visibility
            update(args.repo_id, private=True)
            print(f"semflow: {args.repo_id} is private", file=sys.stderr)
        if args.revision and not args.revision.startswith("refs/"):
            step = f"create the branch {args.revision}"
            api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        step = "upload"
        info = api.upload_folder(
            folder_path=str(model_dir), repo_id=args.repo_id, allow_patterns=files,
            delete_patterns=None if args.keep_remote_files else "*",  # stale files; .gitattributes is always kept
            commit_message=args.commit_message, revision=args.revision, create_pr=args.create_pr or None,
        )
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a clean message and exit code instead of a traceback
        print(f"semflow: push to {args.repo_id} failed ({step}): {_hub_error(e)}", file=sys.stderr)
        return 1
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info
    print(f"Uploaded {len(files)} files to {where}: {url}")
    return 0


def run_convert_official(args) -> int:
    import torch

    from .convert_official import NotAStateDictError, convert_official

    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"semflow: {out} exists and is not empty (pass --overwrite to write into it)", file=sys.stderr)
        return 1
    try:
        convert_official(args.checkpoint, args.stable_diffusion, out, dtype=getattr(torch, args.dtype),
                         prompt_embedding=args.prompt_embedding, num_inference_steps=args.num_inference_steps)
    except (NotAStateDictError, FileNotFoundError, ValueError) as e:
        print(f"semflow: convert-official failed: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {out} (load with SemFlowPipeline.from_pretrained({str(out)!r}))")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, except flags and options whose default means "not set"."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semflow", description=__doc__.split("\n\n")[0],
                                     epilog="Run `semflow COMMAND --help` for the options of each command.",
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    model_help = "pipeline folder or Hub repo id (env SEMFLOW_MODEL overrides the default)"
    steps_help = "Euler steps of the ODE (default: the model's default_num_inference_steps)"
    synthesis_steps_help = ("Euler steps of the ODE (default: the model's default_synthesis_num_inference_steps, "
                            "else its default_num_inference_steps)")

    seg = sub.add_parser("segment", help="segment images (files or folders) into label-id and colour PNGs",
                         description="Segment photos: writes OUT/<name>_labels.png (class ids) and "
                                     "OUT/<name>_color.png (display colours) for every input image.",
                         formatter_class=_HelpFormatter)
    seg.add_argument("inputs", nargs="+", help="image files, or folders (their image files, sorted)")
    seg.add_argument("-o", "--output-dir", required=True, metavar="OUT",
                     help="folder for the outputs (created if missing)")
    seg.add_argument("--model", default=default_model(), help=model_help)
    seg.add_argument("--num-inference-steps", type=positive_int, default=None, help=steps_help)
    seg.add_argument("--processing-resolution", type=non_negative_int, default=None,
                     help="longest side the model sees, in pixels (default: the model's default_processing_resolution)")
    seg.add_argument("--save-confidence", action="store_true", help="also write OUT/<name>_confidence.png (0-255)")
    seg.set_defaults(func=run_segment)

    syn = sub.add_parser("synthesize", help="synthesize images from label-id or colour-coded masks",
                         description="Synthesize photos from masks (label-id PNGs or colour-coded images): writes "
                                     "OUT/<name>_sample<k>.png.", formatter_class=_HelpFormatter)
    syn.add_argument("inputs", nargs="+", help="mask files, or folders (their image files, sorted)")
    syn.add_argument("-o", "--output-dir", required=True, metavar="OUT",
                     help="folder for the outputs (created if missing)")
    syn.add_argument("--model", default=default_model(), help=model_help)
    syn.add_argument("--num-samples", type=positive_int, default=1, help="images per mask")
    syn.add_argument("--seed", type=int, default=0, help="random seed; the i-th mask uses SEED + i")
    syn.add_argument("--perturbation", type=non_negative_float, default=None,
                     help="strength of the random perturbation of the mask, more varied and less faithful images "
                          "(default: the model's default_synthesis_perturbation)")
    syn.add_argument("--num-inference-steps", type=positive_int, default=None, help=synthesis_steps_help)
    syn.set_defaults(func=run_synthesize)

    push = sub.add_parser(
        "push", help="upload a saved pipeline (weights, code, model card) to the Hub",
        description="Check a saved pipeline folder and upload it to a Hugging Face Hub model repo. The folder must "
                    "load (SemFlowPipeline and trust_remote_code), hold safetensors weights only, with intact "
                    "headers, and no symlink out of it. Log in first with `hf auth login`, or set HF_TOKEN.",
        formatter_class=_HelpFormatter)
    push.add_argument("model_dir", help="the saved pipeline folder, e.g. checkpoints/semflow-camvid")
    push.add_argument("repo_id", help="the Hub model repo, USER_OR_ORG/NAME (created if missing)")
    push.add_argument("--dry-run", action="store_true", help="run every check, list what would be uploaded, and stop")
    push.add_argument("--private", action="store_true",
                      help="make the repo private, also when it exists already (otherwise its visibility is kept)")
    push.add_argument("--revision", default=None,
                      help="branch to commit to, created from main if missing (default: main)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request against main instead of committing")
    push.add_argument("--keep-remote-files", action="store_true",
                      help="keep files on the Hub that are not in the folder (by default stale files are deleted)")
    push.add_argument("--commit-message", default="Upload SemFlow pipeline", help="the commit's message")
    push.add_argument("--token", default=None,
                      help="deprecated (it lands in the shell history): set HF_TOKEN or run `hf auth login` "
                           "(default: HF_TOKEN, else the token saved by `hf auth login`)")
    push.set_defaults(func=run_push)

    conv = sub.add_parser(
        "convert-official", help="turn the authors' face.pt (SD-1.5 UNet weights) into a SemFlowPipeline folder",
        description="Build a SemFlowPipeline folder (Hub layout, safetensors, model card) from the authors' released "
                    "checkpoint: SD-1.5's UNet config with the official weights, SD-1.5's VAE, the empty-prompt "
                    "embedding precomputed and stored, the paper palette over CelebAMask-HQ's 19 classes, and the "
                    "scheduler on the authors' timestep grid. The .pt is read with torch.load(weights_only=True).",
        formatter_class=_HelpFormatter)
    conv.add_argument("--checkpoint", required=True,
                      help="face.pt: a local file, or OWNER/REPO/FILE on the Hub (chaoyangw/semflow/face.pt)")
    conv.add_argument("--stable-diffusion", required=True, metavar="SD",
                      help="a Stable Diffusion 1.5 folder (unet/, vae/, text_encoder/, tokenizer/) or its Hub id")
    conv.add_argument("-o", "--output-dir", required=True, metavar="OUT", help="the pipeline folder to write")
    conv.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                      help="dtype of the saved UNet and VAE weights")
    conv.add_argument("--prompt-embedding", default=None, metavar="FILE",
                      help="a precomputed empty-prompt embedding (safetensors, key prompt_embeds) "
                           "(default: computed with SD's text_encoder/ and tokenizer/)")
    conv.add_argument("--num-inference-steps", type=int, default=25, help="the default Euler steps (both directions)")
    conv.add_argument("--overwrite", action="store_true", help="write into OUT even if it is not empty")
    conv.set_defaults(func=run_convert_official)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
