"""diffusers' own test suites, run unchanged against ``SemFlowScheduler`` and ``SemFlowPipeline``.

The suites are imported from a checkout of huggingface/diffusers named by ``DIFFUSERS_SRC`` (the folder that holds
``tests/``); without one (as in CI) this module is skipped with the reason. They also need ``parameterized`` and
``requests-mock``. Run them with::

    DIFFUSERS_SRC=/path/to/diffusers python -m pytest tests/diffusers_suites -q

- ``SchedulerCommonTest`` (tests/schedulers/test_schedulers.py), set up like diffusers' per-scheduler files
  (``forward_default_kwargs``, ``get_scheduler_config``), for the Euler and the Heun solver.
- ``PipelineTesterMixin`` (tests/pipelines/test_pipelines_common.py) with the parameter adaptation diffusers uses for
  Marigold (tests/pipelines/marigold/test_marigold_depth.py): an image-in pipeline, ``params = batch_params =
  {"image"}``, ``required_optional_params = {"num_inference_steps", "generator", "output_type"}``, no xformers.

What cannot apply to a two-ended ODE, and why:

- ``SchedulerCommonTest.test_trained_betas``: skipped. It builds the scheduler with ``trained_betas=`` and compares
  ``scheduler.betas``; the rectified-flow ODE has no noise schedule (diffusers skips it for ``EDMEulerScheduler``
  for the same reason).
- ``check_over_configs(prediction_type="endpoints")`` is not run: the suite's model output is ``0.1 * sample`` (C
  channels) while an endpoints model outputs 2C (both predicted ends), which ``step`` refuses with a clear error.
  tests/test_scheduler.py covers endpoints with a 2C output.
- The suites never pass ``direction``: every schedule they build runs t: 0 -> 1 (segmentation). The backward
  (synthesis) direction is covered by tests/test_scheduler.py and tests/test_pipeline.py.
- ``PipelineTesterMixin`` tests that return early for this pipeline (they pass, but test nothing here):
  ``test_num_images_per_prompt`` and ``test_cfg``/``test_callback_cfg`` (no ``num_images_per_prompt`` or
  ``guidance_scale``: segmentation has one answer per image and there is no text conditioning to guide),
  ``test_encode_prompt_works_in_isolation`` (no ``encode_prompt``; the SD-style UNet gets a fixed empty-prompt
  embedding), ``test_StableDiffusionMixin_component`` (not a Stable Diffusion pipeline). ``test_layerwise_casting``
  is switched on and runs (float8 storage, bf16 compute).
- Tests that need an accelerator are skipped by the suite itself on a CPU-only machine: ``test_float16_inference``,
  ``test_save_load_float16``, ``test_to_device``, the four ``*offload_forward_pass*`` tests, the group-offloading
  tests and xformers. tests/test_pipeline_conventions.py runs sequential and model CPU offload on the CPU
  (``device="cpu"``).

Result with diffusers 0.42.1 installed and the suites of diffusers' main branch (58eb52c, the newest the mirror had;
it has no 0.42 tag), CPU only: 24 scheduler tests (12 each for Euler and Heun) and 22 pipeline tests pass; 2 skipped as
above (trained betas) and 11 skipped for want of an accelerator.
- The pipeline's ``output[0]`` is the label map (int64); the suite's numeric comparisons hold exactly because
  segmentation is deterministic.
"""

import importlib
import importlib.util
import os
import random
import sys
import unittest

import pytest
import torch
from diffusers import UNet2DModel

from semflow_pipeline import SemFlowPipeline, SemFlowScheduler


def _load_suites():
    src = os.environ.get("DIFFUSERS_SRC")
    if not src:
        return None, ("DIFFUSERS_SRC is not set: point it at a checkout of huggingface/diffusers (the folder with "
                      "tests/), ideally at the installed version, to run diffusers' own suites")
    tests_dir = os.path.join(src, "tests")
    if not os.path.isfile(os.path.join(tests_dir, "__init__.py")):
        return None, f"DIFFUSERS_SRC={src} has no tests/ package"
    name = "diffusers_tests"  # not `tests`, which would clash with other projects' test folders
    try:
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                name, os.path.join(tests_dir, "__init__.py"), submodule_search_locations=[tests_dir]
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        schedulers = importlib.import_module(f"{name}.schedulers.test_schedulers")
        pipelines = importlib.import_module(f"{name}.pipelines.test_pipelines_common")
        testing_utils = importlib.import_module(f"{name}.testing_utils")
    except Exception as e:  # a missing test dependency, or a checkout that does not match the installed diffusers
        return None, f"cannot import diffusers' suites from {tests_dir}: {type(e).__name__}: {e}"
    return (schedulers, pipelines, testing_utils), None


SUITES, REASON = _load_suites()
if SUITES is None:
    pytest.skip(REASON, allow_module_level=True)
test_schedulers, test_pipelines_common, testing_utils = SUITES


class SemFlowSchedulerCommonTest(test_schedulers.SchedulerCommonTest):
    scheduler_classes = (SemFlowScheduler,)
    forward_default_kwargs = (("num_inference_steps", 10),)

    def get_scheduler_config(self, **kwargs):
        # Like diffusers' own files, leave some arguments at their defaults: test_from_pretrained expects the
        # config's `_use_default_values`, which diffusers only records when a default was used.
        config = {"num_train_timesteps": 1000}
        config.update(**kwargs)
        return config

    @unittest.skip(reason="No beta schedule: the SemFlow ODE runs between two data ends and has no noise levels.")
    def test_trained_betas(self):
        pass

    # As diffusers' per-scheduler files do, check that saved and reloaded configs step identically.
    def test_solvers(self):
        for solver in ("euler", "heun"):
            self.check_over_configs(time_step=0, solver=solver)

    def test_num_train_timesteps(self):
        for n in (100, 1000):
            self.check_over_configs(time_step=0, num_train_timesteps=n)

    def test_inference_steps(self):
        for steps in (1, 5, 50):
            self.check_over_forward(time_step=0, num_inference_steps=steps)


class SemFlowHeunSchedulerCommonTest(SemFlowSchedulerCommonTest):
    def get_scheduler_config(self, **kwargs):
        return super().get_scheduler_config(**{"solver": "heun", **kwargs})


class SemFlowPipelineFastTests(test_pipelines_common.PipelineTesterMixin, unittest.TestCase):
    pipeline_class = SemFlowPipeline
    params = frozenset(["image"])
    batch_params = frozenset(["image"])
    image_params = frozenset(["image"])
    image_latents_params = frozenset(["latents"])
    callback_cfg_params = frozenset([])
    test_xformers_attention = False
    test_layerwise_casting = True  # float8 storage, bf16 compute: the pipeline casts its state to the UNet's dtype
    required_optional_params = frozenset(["num_inference_steps", "generator", "output_type"])

    def get_dummy_components(self):
        # 4 classes, simplex palette: the state has 3 + 4 channels; an endpoints UNet outputs twice that.
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=32, in_channels=7, out_channels=14, block_out_channels=(32, 64), layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )
        return {
            "unet": unet,
            "scheduler": SemFlowScheduler(prediction_type="endpoints"),
            "vae": None,
            "text_encoder": None,
            "tokenizer": None,
            "palette": "simplex",
            "default_processing_resolution": 32,
        }

    def get_dummy_inputs(self, device, seed=0):
        image = testing_utils.floats_tensor((1, 3, 32, 32), rng=random.Random(seed)).to(device)
        image = image / 2 + 0.5
        if str(device).startswith("mps"):
            generator = torch.manual_seed(seed)
        else:
            generator = torch.Generator(device=device).manual_seed(seed)
        return {
            "image": image,
            "num_inference_steps": 2,
            "processing_resolution": 0,
            "generator": generator,
            "output_type": "np",
        }
