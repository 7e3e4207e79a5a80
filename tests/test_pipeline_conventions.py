"""The pipeline behaves like a diffusers pipeline: offload, every from_pretrained argument, typed components,
an explicit __call__ signature, generator lists, callbacks, latent output, and errors that name the right thing."""

import inspect
import io
import json
import logging
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.callbacks import PipelineCallback

from semflow_pipeline import SemFlowPipeline, SemFlowScheduler
from semflow_pipeline.pipeline_semflow import make_generator
from semflow_tiny import camvid_label_config, tiny_latent_pipeline, tiny_pixel_pipeline

IMAGE = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
MASK = np.random.default_rng(1).integers(0, 11, (30, 40))


def seg(pipe, **kwargs):
    return pipe.segment(IMAGE, num_inference_steps=2, **kwargs)


def syn(pipe, seed=0, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe.synthesize(MASK, num_inference_steps=2, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    tiny_pixel_pipeline().save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------- offload
@pytest.mark.parametrize("offload", ["enable_sequential_cpu_offload", "enable_model_cpu_offload"])
def test_cpu_offload_gives_the_same_results(offload):
    reference = tiny_pixel_pipeline()
    pipe = tiny_pixel_pipeline()
    getattr(pipe, offload)(device="cpu")
    assert pipe._execution_device.type == "cpu"
    assert np.array_equal(seg(pipe).labels, seg(reference).labels)
    np.testing.assert_allclose(syn(pipe), syn(reference), atol=1e-6)
    assert np.array_equal(seg(pipe).labels, seg(reference).labels)  # and again, after the hooks ran once


def test_model_offload_in_latent_mode():
    reference, pipe = tiny_latent_pipeline(), tiny_latent_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    assert np.array_equal(seg(pipe).labels, seg(reference).labels)


# ------------------------------------------------------------------------------------------ from_pretrained
@pytest.mark.parametrize("kwargs,dtype", [
    (dict(dtype=torch.bfloat16), torch.bfloat16),
    (dict(torch_dtype=torch.float16), torch.float16),
    (dict(dtype={"unet": torch.bfloat16, "default": torch.float16}), torch.bfloat16),
    (dict(variant=None), torch.float32),
    (dict(device_map="cpu"), torch.float32),
    (dict(use_safetensors=True), torch.float32),
    (dict(low_cpu_mem_usage=False), torch.float32),
    (dict(local_files_only=True, revision=None, cache_dir=None), torch.float32),
])
def test_from_pretrained_takes_diffusers_arguments(saved, kwargs, dtype):
    pipe = SemFlowPipeline.from_pretrained(saved, **kwargs)
    assert type(pipe) is SemFlowPipeline and type(pipe.scheduler) is SemFlowScheduler  # the package's classes
    assert pipe.unet.dtype == dtype
    assert pipe.config._name_or_path == str(saved)


def test_from_pretrained_loads_variants_and_refuses_missing_ones(tmp_path):
    pipe = tiny_pixel_pipeline()
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    loaded = SemFlowPipeline.from_pretrained(tmp_path / "fp16", variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), loaded.unet.parameters()))
    pipe.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="variant=fp16"):
        SemFlowPipeline.from_pretrained(tmp_path / "plain", variant="fp16")


def test_from_pretrained_logs_what_it_loads(saved):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        SemFlowPipeline.from_pretrained(saved)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    log = stream.getvalue()
    assert "Loaded unet as UNet2DModel" in log and "Loaded scheduler as SemFlowScheduler" in log


def test_from_pretrained_keeps_overrides(saved):
    pipe = SemFlowPipeline.from_pretrained(saved, scheduler=SemFlowScheduler(prediction_type="endpoints",
                                                                             solver="heun"),
                                           default_num_inference_steps=3)
    assert pipe.scheduler.config.solver == "heun" and pipe.config.default_num_inference_steps == 3


# --------------------------------------------------------------------------------------- components
def test_components_have_type_hints_and_from_pipe_keeps_everything():
    hints = SemFlowPipeline._get_signature_types()
    assert all(hints[k] != (inspect.Signature.empty,) for k in ("unet", "scheduler", "vae", "text_encoder",
                                                                 "tokenizer"))
    pipe = tiny_pixel_pipeline()
    other = SemFlowPipeline.from_pipe(pipe)
    assert other.unet is pipe.unet and other.class_names == pipe.class_names
    assert other.config.ignore_index == 11 and other.config.default_processing_resolution == 32
    assert np.array_equal(seg(other).labels, seg(pipe).labels)


def test_components_alone_rebuild_a_simplex_pipeline(caplog):
    pipe = tiny_pixel_pipeline()
    rebuilt = SemFlowPipeline(**pipe.components)
    assert rebuilt.num_classes == 11 and rebuilt.class_names[0] == "class_0"
    assert rebuilt.segment(IMAGE, num_inference_steps=1).labels.shape == (1, 30, 40)
    full = SemFlowPipeline(**pipe.components, **pipe.parameters)
    assert full.class_names == pipe.class_names
    assert np.array_equal(seg(full).labels, seg(pipe).labels)


def test_components_alone_refuse_to_guess_an_ambiguous_class_count():
    pipe = tiny_pixel_pipeline(space_to_depth=2)  # 56 channels: 11 classes folded by 2, or 53 classes unfolded
    with pytest.raises(ValueError, match=r"53 classes at space_to_depth=1 but also 11 classes at space_to_depth=2"):
        SemFlowPipeline(**pipe.components)
    with pytest.raises(ValueError, match="cannot be read from the UNet"):
        SemFlowPipeline(**tiny_latent_pipeline().components)


# ------------------------------------------------------------------------------------------- __call__
def test_call_signature_is_written_out():
    params = inspect.signature(SemFlowPipeline.__call__).parameters
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    for name in ("image", "mask", "num_inference_steps", "return_dict", "output_type", "generator",
                 "callback_on_step_end", "callback_on_step_end_tensor_inputs", "perturbation", "batch_size"):
        assert params[name].default is not inspect.Parameter.empty, name


def test_call_passes_its_arguments_to_the_right_method(pixel_pipe):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = pixel_pipe(mask=MASK, num_inference_steps=2, perturbation=0.1, num_images_per_mask=2, generator=g(),
                   output_type="np", return_dict=False)[0]
    b = pixel_pipe.synthesize(MASK, num_inference_steps=2, perturbation=0.1, num_images_per_mask=2, generator=g(),
                              output_type="np").images
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="synthesis"):
        pixel_pipe(image=IMAGE, perturbation=0.1)
    with pytest.raises(ValueError, match="segmentation"):
        pixel_pipe(mask=MASK, batch_size=2)


@pytest.mark.parametrize("text", ["a street", ["a street", "a car"]])
def test_a_text_prompt_gets_told_what_the_pipeline_takes(pixel_pipe, text):
    with pytest.raises(ValueError, match=r"takes images, not a text prompt.*pipe\(image=.*pipe\(mask="):
        pixel_pipe(text)


# ------------------------------------------------------------------------------------------ generators
def test_a_list_of_generators_gives_each_image_its_own(pixel_pipe):
    seeds = [3, 4, 5, 6]
    batch = pixel_pipe.synthesize([MASK, MASK], num_inference_steps=2, num_images_per_mask=2, perturbation=0.3,
                                  generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np").images
    for image, s in zip(batch, seeds):
        np.testing.assert_allclose(image, syn(pixel_pipe, s, perturbation=0.3)[0], atol=1e-5)  # batch numerics
    with pytest.raises(ValueError, match="one per image"):
        pixel_pipe.synthesize(MASK, num_images_per_mask=2, generator=[torch.Generator()])


def test_gaussian_coupling_draws_per_image_noise_from_each_generator():
    base = tiny_pixel_pipeline()
    pipe = SemFlowPipeline(unet=base.unet, scheduler=base.scheduler, coupling="gaussian",
                           default_processing_resolution=32, **camvid_label_config())
    pipe.set_progress_bar_config(disable=True)
    batch = syn(pipe, generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
                num_images_per_mask=2)
    np.testing.assert_allclose(batch[1], syn(pipe, 2)[0], atol=1e-5)
    assert not np.allclose(batch[0], batch[1])


def test_segment_takes_a_generator_and_ignores_it(pixel_pipe):
    reference = seg(pixel_pipe).labels
    assert np.array_equal(seg(pixel_pipe, generator=torch.Generator().manual_seed(9)).labels, reference)
    assert np.array_equal(pixel_pipe.segment([IMAGE, IMAGE], num_inference_steps=2,
                                             generator=[torch.Generator(), torch.Generator()]).labels[1], reference[0])


def test_generators_and_seeds_get_clear_messages(pixel_pipe):
    with pytest.raises(ValueError, match=r"torch.Generator or a list of them.*manual_seed"):
        pixel_pipe.synthesize(MASK, generator=0)
    with pytest.raises(ValueError, match="torch.Generator"):
        pixel_pipe.segment(IMAGE, generator="seed")
    with pytest.raises(ValueError, match=r"from -2\*\*63 to 2\*\*64 - 1"):
        make_generator(2**70)
    assert make_generator(np.int64(7)).initial_seed() == 7
    assert make_generator(2**64 - 1).initial_seed() == 2**64 - 1


# ------------------------------------------------------------------------------------------- callbacks
def test_callbacks_get_the_named_tensors_and_can_replace_the_state(pixel_pipe):
    assert pixel_pipe._callback_tensor_inputs == ["latents"]
    seen = []

    def zero_last(pipe, i, t, kwargs):
        seen.append(sorted(kwargs))
        if i == pipe.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pixel_pipe(image=IMAGE, num_inference_steps=3, output_type="latent", callback_on_step_end=zero_last,
                     callback_on_step_end_tensor_inputs=["latents"])[0]
    assert pixel_pipe.num_timesteps == 3 and seen == [["latents"]] * 3
    assert out.abs().sum() == 0
    seen.clear()
    pixel_pipe.segment(IMAGE, callback_on_step_end=lambda p, i, t, kw: seen.append(kw) or kw,
                       callback_on_step_end_tensor_inputs=[])
    assert seen == [{}]
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pixel_pipe.segment(IMAGE, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_pipeline_callback_objects_are_accepted(pixel_pipe):
    class Count(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            calls.append(step_index)
            return callback_kwargs

    calls = []
    pixel_pipe.segment(IMAGE, num_inference_steps=2, callback_on_step_end=Count())
    assert calls == [0, 1]


def test_heun_counts_two_timesteps_per_step():
    pipe = tiny_pixel_pipeline()
    pipe.scheduler = SemFlowScheduler(prediction_type="endpoints", solver="heun")
    pipe.segment(IMAGE, num_inference_steps=3)
    assert pipe.num_timesteps == 6


# ----------------------------------------------------------------------------------------- latent output
def test_latent_output_is_the_raw_end_state(pixel_pipe):
    states = []
    out = pixel_pipe.segment(IMAGE, num_inference_steps=2, output_type="latent",
                             callback_on_step_end=lambda p, i, t, kw: states.append(kw["latents"]) or kw)
    assert out.labels is None and out[0] is out.latents and torch.equal(out.latents, states[-1])
    assert out.latents.shape == (1, 14, 24, 32)
    assert torch.equal(pixel_pipe.segment(IMAGE, num_inference_steps=2, output_type="latent",
                                          return_dict=False)[0], out.latents)
    images = pixel_pipe.synthesize(MASK, num_images_per_mask=2, output_type="latent",
                                   generator=torch.Generator().manual_seed(0))
    assert images.images is None and images.latents.shape == (2, 14, 24, 32)


def test_latent_output_in_latent_mode_is_vae_latents():
    pipe = tiny_latent_pipeline()
    assert pipe.segment(IMAGE, output_type="latent").latents.shape == (1, 4, 12, 16)


def test_a_list_of_batches_is_unpacked(pixel_pipe):
    batch = torch.from_numpy(IMAGE).permute(2, 0, 1)[None].float() / 255
    out = pixel_pipe.segment([batch, batch], num_inference_steps=2)
    assert out.labels.shape == (2, 30, 40) and np.array_equal(out.labels[1], seg(pixel_pipe).labels[0])


# ------------------------------------------------------------------------------- errors that name the thing
def test_numpy_numbers_are_accepted(pixel_pipe):
    a = pixel_pipe.synthesize(MASK, num_inference_steps=np.int64(2), perturbation=np.float32(0.05),
                              num_images_per_mask=np.int32(1), processing_resolution=np.int64(32),
                              generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(a, syn(pixel_pipe, perturbation=float(np.float32(0.05))), atol=1e-6)
    assert np.array_equal(pixel_pipe.segment(IMAGE, num_inference_steps=np.int64(2), batch_size=np.int64(2)).labels,
                          seg(pixel_pipe).labels)


@pytest.mark.parametrize("path,message", [
    ("/no/such/semflow-model", "No such folder: `/no/such/semflow-model`"),
    ("./no-such-model", "No such folder"),
    ("tests/no-such-model", r"`tests/` exists here"),
])
def test_a_missing_local_path_is_named_as_a_missing_folder(path, message):
    with pytest.raises(FileNotFoundError, match=message):
        SemFlowPipeline.from_pretrained(path)


def test_a_file_instead_of_a_folder_is_named(saved):
    with pytest.raises(ValueError, match="is a file"):
        SemFlowPipeline.from_pretrained(saved / "model_index.json")


def copy_of(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    return folder


def edit_index(folder, **changes):
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    (folder / "model_index.json").write_text(json.dumps(index))


def test_a_missing_unet_config_names_the_unet_folder(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet[/\\]config.json` is missing: the `unet` component's config"):
        SemFlowPipeline.from_pretrained(folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(FileNotFoundError, match=r"copy[/\\]unet` is missing"):
        SemFlowPipeline.from_pretrained(folder)


def test_a_missing_scheduler_config_or_index_is_named(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json` is missing"):
        SemFlowPipeline.from_pretrained(folder)
    (folder / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json` is missing"):
        SemFlowPipeline.from_pretrained(folder)


@pytest.mark.parametrize("entry,message", [
    (["diffusers", "logging"], "is a module, not a class"),
    (["diffusers", "is_torch_available"], "is a function, not a class"),
    (["diffusers", "UNet2DModell"], "has no `UNet2DModell`"),
    (["no_such_library", "UNet2DModel"], "cannot be imported"),
])
def test_a_component_that_is_not_a_class_is_named(saved, tmp_path, entry, message):
    folder = copy_of(saved, tmp_path)
    edit_index(folder, unet=entry)
    with pytest.raises(ValueError, match=rf"for the `unet` component.*{message}"):
        SemFlowPipeline.from_pretrained(folder)


def test_a_changed_space_to_depth_is_caught_at_load_and_init(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    edit_index(folder, space_to_depth=2)
    with pytest.raises(ValueError, match=r"takes 14 input channels.*needs 56.*space_to_depth.*fits space_to_depth=1"):
        SemFlowPipeline.from_pretrained(folder)
    pipe = tiny_pixel_pipeline(space_to_depth=2)
    with pytest.raises(ValueError, match="space_to_depth"):
        SemFlowPipeline(unet=pipe.unet, scheduler=pipe.scheduler, space_to_depth=3, **camvid_label_config())
    with pytest.raises(ValueError, match=r"outputs 112 channels.*'velocity'.*needs 1 x 56"):
        SemFlowPipeline(unet=pipe.unet, scheduler=SemFlowScheduler(prediction_type="velocity"), space_to_depth=2,
                        **camvid_label_config())


def test_synthesis_defaults_come_from_the_config_and_survive_save_load(tmp_path):
    """``default_synthesis_num_inference_steps`` / ``default_synthesis_perturbation``: what ``synthesize`` and
    ``pipe(mask=...)`` use when the caller gives nothing; segmentation keeps ``default_num_inference_steps``."""
    from semflow_tiny import tiny_pixel_pipeline

    pipe = tiny_pixel_pipeline()
    mask = np.zeros((32, 32), np.int64)
    mask[16:] = 3
    pipe.synthesize(mask, output_type="np")
    assert pipe.num_timesteps == 1  # no synthesis default: the shared default_num_inference_steps
    pipe.register_to_config(default_synthesis_num_inference_steps=4, default_synthesis_perturbation=0.0)
    pipe.save_pretrained(tmp_path / "m")
    loaded = type(pipe).from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_synthesis_num_inference_steps == 4
    loaded.synthesize(mask, output_type="np")
    assert loaded.num_timesteps == 4
    loaded(mask=mask, output_type="np")
    assert loaded.num_timesteps == 4
    loaded.synthesize(mask, num_inference_steps=2, output_type="np")
    assert loaded.num_timesteps == 2  # an explicit count wins
    loaded.segment(np.zeros((32, 32, 3), np.uint8))
    assert loaded.num_timesteps == 1  # segmentation: default_num_inference_steps
    # β = 0 by config (paper coupling: the perturbation is the only randomness): two seeds give one image;
    # β given explicitly: they differ.
    a, b = (loaded.synthesize(mask, generator=torch.Generator().manual_seed(s), output_type="np").images
            for s in (0, 1))
    assert np.array_equal(a, b)
    a, b = (loaded.synthesize(mask, perturbation=0.2, generator=torch.Generator().manual_seed(s),
                              output_type="np").images for s in (0, 1))
    assert not np.array_equal(a, b)


def test_num_images_per_prompt_is_an_alias_of_num_images_per_mask(pixel_pipe):
    # Issue 17 item 18: diffusers' usual name was refused by synthesize and __call__.
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ref = pixel_pipe.synthesize(MASK, num_inference_steps=2, num_images_per_mask=2, generator=g(),
                                output_type="np").images
    for out in (pixel_pipe.synthesize(MASK, num_inference_steps=2, num_images_per_prompt=2, generator=g(),
                                      output_type="np").images,
                pixel_pipe(mask=MASK, num_inference_steps=2, num_images_per_prompt=2, generator=g(),
                           output_type="np").images,
                pixel_pipe(mask=MASK, num_inference_steps=2, num_images_per_prompt=2, num_images_per_mask=2,
                           generator=g(), output_type="np").images):
        assert np.array_equal(out, ref)
    with pytest.raises(ValueError, match="alias of `num_images_per_mask`"):
        pixel_pipe.synthesize(MASK, num_images_per_mask=2, num_images_per_prompt=3)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pixel_pipe.synthesize(MASK, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="synthesis"):
        pixel_pipe(image=IMAGE, num_images_per_prompt=2)
