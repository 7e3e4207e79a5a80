#!/usr/bin/env python
"""Train SemFlow (or the cross-entropy baseline) on image/label pairs, with accelerate.

    accelerate launch training/train_semflow.py --config training/configs/camvid.yaml
    python training/train_semflow.py --config training/configs/camvid.yaml --set train_steps=200 output_dir=runs/x
    accelerate launch --cpu --num_processes 2 training/train_semflow.py --config ...   # 2 CPU processes (DDP)

Objectives (``objective``): ``semflow`` -- rectified flow between the image and its anchor mask, MSE on the
scheduler's target through ``pipe.predict`` (the same folding/conditioning as inference); ``ce`` -- the
discriminative baseline: the same UNet with K output channels and cross-entropy.

Batches are drawn by step number from a seeded permutation (``batch_size`` per process, each process takes its
own shard), so ``--resume_from_checkpoint latest`` replays exactly the batches an uninterrupted run would see.
See training/README.md for all config keys.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from training.adversarial import FeatureDiscriminator, discriminator_loss, generator_loss  # noqa: E402
from training.baseline import BaselineSegmenter, build_unet, forward_logits  # noqa: E402
from training.data import CAMVID_COLORS, AugmentConfig, build_dataset  # noqa: E402
from training.distill import distill_loss, layout_loss, load_teacher, teacher_logits  # noqa: E402

DEFAULTS: Dict[str, Any] = {
    # data
    "dataset": "camvid", "data_root": "../shared/datasets/camvid", "train_split": "train", "val_split": "val",
    "resolution": [96, 128], "scale_min": 1.0, "scale_max": 1.5, "hflip": True, "preload": True,
    "max_train_samples": None, "max_val_samples": None, "num_workers": 0,
    # model
    "objective": "semflow", "mode": "pixel", "palette": "simplex", "prediction_type": "endpoints",
    "solver": "euler", "timestep_spacing": "linspace", "gradient_checkpointing": False, "space_to_depth": 1, "block_out_channels": [32, 64, 128, 128], "layers_per_block": 1,
    "attention_levels": [], "norm_num_groups": 8, "pretrained_model_name_or_path": None,
    "init_from": None,  # pixel mode: a saved SemFlow pipeline folder whose unet weights start this run (warm start)
    # pixel mode: "efficientnet-lite0" = SemFlowUNet2DModel (ImageNet-pretrained Lite0 trunk on the image channels)
    "image_encoder": None, "feature_channels": 64, "encoder_lr_scale": 1.0,
    "trunk_downscale": 1,  # the trunk sees the image shrunk by this factor (a faster model; SemFlowUNet2DModel)
    # flow
    "t_sampling": "uniform", "t_zero_prob": 0.0, "t_one_prob": 0.0, "t_beta_alpha": 0.5,
    "coupling": "paper", "coupling_noise_prob": 1.0, "perturbation": 0.05, "mask_ignore_in_loss": True, "mask_loss_weight": 1.0,
    "mask_ce_weight": 0.0, "mask_ce_scale": 4.0,
    "mask_ce_class_balance": 0.0,  # CE class weights (median share / share) ** this (0 = unweighted)
    "perceptual_weight": 0.0,  # frozen-Lite0 feature distance between the predicted image end and the photo
    # the perceptual and layout terms only on samples with t <= *_t_max: near the mask end the image end is
    # a conditional mean that the seed's noise must be free to move (1.0 = every t)
    "perceptual_t_max": 1.0, "layout_t_max": 1.0,
    # hinge GAN term on the predicted image end (training/adversarial.py), for samples with t >= adversarial_t_min
    "adversarial_weight": 0.0, "adversarial_t_min": 0.05, "discriminator_lr": 2e-4, "discriminator_width": 64,
    # a frozen CE segmenter folder (training/distill.py): distil its soft labels into the mask head, and/or
    # ask it to find the mask's layout in the predicted image end (samples with t >= layout_t_min)
    # (distillation only on samples with t <= distill_t_max: 0 = the segmentation end alone)
    "teacher": None, "distill_weight": 0.0, "distill_temperature": 2.0, "distill_t_max": 1.0,
    "layout_weight": 0.0, "layout_t_min": 0.05,
    # a frozen saved SemFlow pipeline whose UNet outputs this one also learns, at the same x_t (knowledge
    # distillation into a smaller student, as BK-SDM: MSE between the two models' predictions, both ends)
    "kd_from": None, "kd_weight": 0.0,
    # optimisation
    "train_steps": 1200, "batch_size": 8, "learning_rate": 1e-3, "lr_schedule": "onecycle", "warmup_steps": 0,
    "weight_decay": 0.01, "max_grad_norm": 1.0, "mixed_precision": "auto", "seed": 0,
    "ema": False, "ema_decay": 0.999, "num_threads": None,
    # logging / checkpoints
    "output_dir": "runs/semflow-camvid", "checkpointing_steps": 200, "checkpoints_total_limit": 2,
    "stop_at_step": None,  # save a checkpoint and exit there (time-sliced jobs; tests)
    "log_every": 10, "val_every": 400, "val_num_inference_steps": 1, "tensorboard": True,
    "default_num_inference_steps": 1, "default_synthesis_num_inference_steps": None, "processing_resolution": None, "eval_num_inference_steps": [1, 2, 5], "final_eval": True,
    "license": "apache-2.0", "hub_model_id": None,
}


# ----------------------------------------------------------------------------------------------- config
def _parse_value(v: str):
    return yaml.safe_load(v)


def load_config(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file of config keys (see DEFAULTS / training/README.md)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override config keys, values parsed as YAML (e.g. resolution=[96,128])")
    ap.add_argument("--output_dir")
    ap.add_argument("--train_steps", type=int)
    ap.add_argument("--objective", choices=["semflow", "ce", "mse"])
    ap.add_argument("--data_root")
    ap.add_argument("--pretrained_model_name_or_path")
    ap.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint-<step> folder")
    ap.add_argument("--overwrite", action="store_true",
                    help="start from scratch in an output_dir that already holds checkpoints, deleting them "
                         "(without it such a run is refused: resume it, or pick a new --output_dir)")
    args = ap.parse_args(argv)
    cfg = dict(DEFAULTS)
    if args.config:
        with open(args.config) as f:
            loaded = yaml.safe_load(f) or {}
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise SystemExit(f"unknown config keys in {args.config}: {sorted(unknown)}")
        cfg.update(loaded)
    for kv in args.set:
        if "=" not in kv:
            raise SystemExit(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        if k not in DEFAULTS:
            raise SystemExit(f"unknown config key {k!r}")
        cfg[k] = _parse_value(v)
    for k in ("output_dir", "train_steps", "objective", "data_root", "pretrained_model_name_or_path"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg["resume_from_checkpoint"] = args.resume_from_checkpoint
    cfg["overwrite"] = bool(args.overwrite)
    launcher = "accelerate launch" if any(k.startswith("ACCELERATE_") for k in os.environ) else "python"
    cfg["command"] = " ".join([launcher, "training/train_semflow.py"] + list(argv if argv is not None else sys.argv[1:]))
    return cfg


# -------------------------------------------------------------------------------------------- t sampling
def sample_t(cfg: Dict[str, Any], n: int, generator: torch.Generator) -> torch.Tensor:
    """Flow times (n,) in [0, 1]. ``uniform``; ``ends``: t=0 with prob t_zero_prob, t=1 with t_one_prob,
    else uniform; ``beta``: Beta(a, a) (a < 1 is U-shaped, mass near both ends)."""
    kind = cfg["t_sampling"]
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "ends":
        u = torch.rand(n, generator=generator)
        t = torch.rand(n, generator=generator)
        p0, p1 = float(cfg["t_zero_prob"]), float(cfg["t_one_prob"])
        t = torch.where(u < p0, torch.zeros_like(t), t)
        return torch.where((u >= p0) & (u < p0 + p1), torch.ones_like(t), t)
    if kind == "beta":
        a = float(cfg["t_beta_alpha"])
        # Beta via two Gammas is not generator-aware; use the inverse-CDF-free trick with uniform -> Kumaraswamy.
        u = torch.rand(n, generator=generator).clamp(1e-6, 1 - 1e-6)
        return (1 - (1 - u) ** (1 / a)) ** (1 / a)
    raise ValueError(f"unknown t_sampling {kind!r}: uniform | ends | beta")


# ----------------------------------------------------------------------------------------------- models
def dataset_info(ds) -> Dict[str, Any]:
    names = list(ds.class_names)
    colors = CAMVID_COLORS if len(names) == len(CAMVID_COLORS) and names[0] == "sky" else None
    return {"class_names": names, "ignore_index": ds.ignore_index, "colors": colors}


def build_pipeline(cfg: Dict[str, Any], info: Dict[str, Any]):
    """SemFlowPipeline with a fresh pixel UNet2DModel, or (latent mode) VAE + UNet2DConditionModel."""
    from semflow_pipeline import SemFlowPipeline, SemFlowScheduler
    from semflow_pipeline.anchors import AnchorCodec

    k = len(info["class_names"])
    id2label = {str(i): n for i, n in enumerate(info["class_names"])}
    label_colors = None
    if info["colors"]:
        label_colors = {str(i): c for i, c in enumerate(info["colors"])}
        if info["ignore_index"] is not None:
            label_colors[str(info["ignore_index"])] = [0, 0, 0]
    scheduler = SemFlowScheduler(num_train_timesteps=1000, prediction_type=cfg["prediction_type"], solver=cfg["solver"],
                                 timestep_spacing=cfg["timestep_spacing"])
    mult = 2 if cfg["prediction_type"] == "endpoints" else 1
    h, w = cfg["resolution"]
    if cfg["mode"] == "pixel":
        c = AnchorCodec(cfg["palette"], k, info["ignore_index"]).num_channels
        s = int(cfg["space_to_depth"])
        if cfg["image_encoder"]:
            unet = build_encoder_unet(cfg, c, mult, s)
        else:
            unet = build_unet(c * s * s, mult * c * s * s, (h // s, w // s), cfg["block_out_channels"],
                              cfg["layers_per_block"], cfg["attention_levels"], cfg["norm_num_groups"])
        return SemFlowPipeline(unet=unet, scheduler=scheduler, id2label=id2label, label_colors=label_colors,
                               ignore_index=info["ignore_index"], palette=cfg["palette"], space_to_depth=s,
                               default_num_inference_steps=cfg["default_num_inference_steps"],
                               default_processing_resolution=int(cfg["processing_resolution"] or max(h, w)),
                               coupling=cfg["coupling"],
                               default_synthesis_num_inference_steps=cfg["default_synthesis_num_inference_steps"])
    if cfg["mode"] != "latent":
        raise ValueError(f"mode must be pixel or latent, got {cfg['mode']!r}")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = cfg["pretrained_model_name_or_path"]
    if not path:
        raise ValueError("latent mode needs pretrained_model_name_or_path (an SD checkpoint folder with vae/)")
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    vae.requires_grad_(False)
    text_encoder = tokenizer = None
    empty_prompt = None
    if os.path.isdir(os.path.join(path, "text_encoder")) or not os.path.isdir(path):
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
            text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
            text_encoder.requires_grad_(False)
        except (OSError, ValueError):
            text_encoder = tokenizer = None
    if text_encoder is not None:
        # The UNet only ever sees the empty prompt: embed it once and store it in the pipeline (as the converted
        # official checkpoint does), so neither training steps nor the saved model need the text encoder.
        from semflow_pipeline.convert_official import empty_prompt_embedding
        from semflow_pipeline.prompt_embedding import SemFlowPromptEmbedding
        empty_prompt = SemFlowPromptEmbedding.from_embedding(empty_prompt_embedding(path), source=str(path))
        empty_prompt.requires_grad_(False)
        cross_attention_dim = text_encoder.config.hidden_size
        text_encoder = tokenizer = None
    else:
        cross_attention_dim = 32
    lat = vae.config.latent_channels
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    if os.path.isdir(os.path.join(path, "unet")) or not os.path.isdir(path):
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    else:  # no UNet in the folder: a fresh small one (tests, or training from scratch)
        unet = UNet2DConditionModel(
            sample_size=(h // f, w // f), in_channels=lat, out_channels=mult * lat,
            block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
            down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(cfg["block_out_channels"]) - 1),
            up_block_types=("UpBlock2D",) * (len(cfg["block_out_channels"]) - 1) + ("CrossAttnUpBlock2D",),
            cross_attention_dim=cross_attention_dim,
            norm_num_groups=cfg["norm_num_groups"], attention_head_dim=4,
        )
    if unet.config.out_channels != mult * lat:
        # Endpoints need 2x the latent channels: widen conv_out, both halves start from the pretrained head.
        old = unet.conv_out
        new = torch.nn.Conv2d(old.in_channels, mult * lat, old.kernel_size, padding=old.padding)
        with torch.no_grad():
            new.weight.copy_(old.weight.repeat(mult, 1, 1, 1)[: mult * lat])
            new.bias.copy_(old.bias.repeat(mult)[: mult * lat])
        unet.conv_out = new
        unet.register_to_config(out_channels=mult * lat)
    if cfg["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    return SemFlowPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           empty_prompt_embedding=empty_prompt, id2label=id2label, label_colors=label_colors, ignore_index=info["ignore_index"],
                           palette=cfg["palette"], default_num_inference_steps=cfg["default_num_inference_steps"],
                           default_processing_resolution=max(h, w))


def build_encoder_unet(cfg: Dict[str, Any], state_channels: int, mult: int, s: int, out_channels: Optional[int] = None):
    """``SemFlowUNet2DModel`` with the pretrained EfficientNet-Lite0 trunk (the UNet part laid out as build_unet's).

    ``out_channels`` (folded) defaults to the ODE's ``mult * state_channels * s^2``; the CE baseline passes ``K * s^2``.
    """
    from semflow_pipeline.unet_semflow import SemFlowUNet2DModel

    if cfg["image_encoder"] != "efficientnet-lite0":
        raise ValueError(f"image_encoder must be null or 'efficientnet-lite0', got {cfg['image_encoder']!r}")
    from training.pretrained import load_lite0

    h, w = cfg["resolution"]
    ref = build_unet(1, 1, (h // s, w // s), cfg["block_out_channels"], cfg["layers_per_block"],
                     cfg["attention_levels"], cfg["norm_num_groups"])  # only its block layout is used
    model = SemFlowUNet2DModel(
        sample_size=(h // s, w // s), in_channels=state_channels * s * s,
        out_channels=out_channels or mult * state_channels * s * s,
        block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
        down_block_types=tuple(ref.config.down_block_types), up_block_types=tuple(ref.config.up_block_types),
        norm_num_groups=cfg["norm_num_groups"], attention_head_dim=ref.config.attention_head_dim,
        space_to_depth=s, image_channels=3, feature_channels=int(cfg["feature_channels"]),
        trunk_downscale=int(cfg["trunk_downscale"]),
    )
    load_lite0(model.encoder)
    return model


def class_weights(dataset, num_classes: int, ignore_index: Optional[int], power: float) -> Optional[torch.Tensor]:
    """Cross-entropy class weights ``(median share / share) ** power`` from the training labels (None if off)."""
    if not power:
        return None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(len(dataset)):
        lab = dataset.raw(i)[1].long().flatten()
        lab = lab[(lab >= 0) & (lab < num_classes)]
        counts += torch.bincount(lab, minlength=num_classes).double()
    share = counts / counts.sum()
    w = (share.median() / share.clamp_min(1e-8)) ** float(power)
    return (w / (w * share).sum()).float()  # mean weight per labelled pixel = 1


# ------------------------------------------------------------------------------------------------- loss
def semflow_loss(pipe, batch, cfg, generator, model=None, perceptual=None, ce_weight=None, disc=None,
                 critic_inputs=None, teacher=None, kd_unet=None) -> torch.Tensor:
    """``model``: the accelerate-prepared UNet (DDP/autocast), run through ``pipe.predict(..., unet=model)``.

    MSE between ``pipe.predict(x_t, t*1000)`` and the scheduler's target; images (N,3,H,W), labels (N,H,W).
    With ``disc`` (and ``perceptual``, whose frozen features it reads) the generator's hinge term is added for
    samples with ``t >= adversarial_t_min``; ``critic_inputs`` (a dict) then receives what the critic's own step
    needs: the detached predicted image ends of those samples, their photos and labels. With ``kd_unet`` (a
    frozen SemFlow UNet of the same state layout) the MSE to its prediction at the same ``x_t`` is added."""
    images, labels = batch["image"], batch["label"]
    image_end, mask_end = pipe.prepare_endpoints(images, labels, perturbation=float(cfg["perturbation"]),
                                                 generator=generator, noise_prob=float(cfg["coupling_noise_prob"]))
    n = images.shape[0]
    t = sample_t(cfg, n, generator).to(images.device)
    timesteps = t * pipe.scheduler.config.num_train_timesteps
    x_t = pipe.scheduler.add_noise(image_end, mask_end, timesteps)
    target = pipe.scheduler.get_target(image_end, mask_end)
    pred = pipe.predict(x_t, timesteps, unet=model)
    err = (pred.float() - target.float()) ** 2  # (N, C or 2C, h, w)
    kd = 0.0
    if kd_unet is not None:
        with torch.no_grad():
            kd_pred = pipe.predict(x_t, timesteps, unet=kd_unet)
        kd = float(cfg["kd_weight"]) * F.mse_loss(pred.float(), kd_pred.float())
    ignore = pipe.config.ignore_index
    if (cfg["mask_ignore_in_loss"] and ignore is not None and pipe.scheduler.config.prediction_type == "endpoints"
            and err.shape[-2:] == labels.shape[-2:]):
        # Void pixels have no class: don't train the mask head there (the image head still learns them).
        c = err.shape[1] // 2
        valid = (labels != ignore).to(err.dtype)[:, None]  # (N,1,h,w)
        mask_err = (err[:, :c] * valid).sum() / (valid.sum() * c).clamp_min(1)
        w = float(cfg["mask_loss_weight"])
        loss = (w * mask_err + err[:, c:].mean()) / (w + 1)
        # Auxiliary terms on the predicted mask end's class channels (read as logits x scale).
        logits = pred[:, :c][:, pipe.codec.class_channels] * float(cfg["mask_ce_scale"])
        if float(cfg["mask_ce_weight"]) > 0 and pipe.vae is None:
            # MSE alone gives rare classes too little pull (see the ablation); near the anchors this term
            # saturates, so the mask head still lands on the anchors the ODE and the decoder expect.
            ce = F.cross_entropy(logits.float(), labels, weight=ce_weight, ignore_index=ignore)
            loss = loss + float(cfg["mask_ce_weight"]) * ce
        if teacher is not None or perceptual is not None:
            image_hat = pipe.codec.image_from_state(pred[:, c:]).float()  # (N,3,h,w) predicted image end
        if teacher is not None:
            # near t=0 the image end is the input photo: nothing to learn
            sel = (t >= float(cfg["layout_t_min"])) & (t <= float(cfg["layout_t_max"]))
            use_layout = float(cfg["layout_weight"]) > 0 and bool(sel.any())
            near = t <= float(cfg["distill_t_max"])  # soft labels off the anchors also move the synthesis ODE
            use_kd = float(cfg["distill_weight"]) > 0 and bool(near.any())
            t_real, t_synth = teacher_logits(teacher, images[near] if use_kd else None,
                                             image_hat[sel] if use_layout else None)
            if use_kd:
                kd = distill_loss(logits[near], t_real, float(cfg["distill_temperature"]))
                loss = loss + float(cfg["distill_weight"]) * kd * near.float().mean()  # per-sample mean over the batch
            if use_layout:
                loss = loss + float(cfg["layout_weight"]) * layout_loss(t_synth, labels[sel], ignore, ce_weight)
        if perceptual is not None and (float(cfg["perceptual_weight"]) > 0 or disc is not None):
            # The predicted image end against the photo in pretrained feature space: MSE alone learns the blurred
            # conditional mean, whose residue stays in the samples as grain (2-RF++ replaces MSE by LPIPS).
            fp = perceptual.features(image_hat)
            with torch.no_grad():
                ft = perceptual.features(images.float())
            low = (t <= float(cfg["perceptual_t_max"])).float()  # (N,), a per-sample mean over the batch
            loss = loss + float(cfg["perceptual_weight"]) * (perceptual.distance(fp, ft) * low).mean()
            sel = t >= float(cfg["adversarial_t_min"])  # near t=0 the image end is the input itself: nothing to judge
            if disc is not None and bool(sel.any()):
                fake = [f[sel] for f in fp]
                loss = loss + float(cfg["adversarial_weight"]) * generator_loss(disc(fake, labels[sel]))
                if critic_inputs is not None:  # the critic's step reuses these features instead of recomputing them
                    critic_inputs.update(fake=[f.detach() for f in fake], real=[f[sel] for f in ft], labels=labels[sel])
        return loss + kd
    return err.mean() + kd


def critic_step(disc, d_optimizer, critic_inputs: Dict[str, Any], accelerator) -> None:
    """One hinge step of the discriminator on this batch's frozen features of the real photos and of the
    (detached) predicted image ends, as ``semflow_loss`` left them in ``critic_inputs``.

    Every process takes the step (an empty selection contributes a zero loss), so DDP's gradient sync stays in
    lockstep."""
    d_optimizer.zero_grad(set_to_none=True)  # drop the grads the generator's term left in the critic
    with accelerator.autocast():
        if critic_inputs:
            labels = critic_inputs["labels"]
            d_loss = discriminator_loss(disc(critic_inputs["real"], labels), disc(critic_inputs["fake"], labels))
        else:
            d_loss = sum(p.sum() for p in disc.parameters()) * 0.0
    accelerator.backward(d_loss)
    d_optimizer.step()
    d_optimizer.zero_grad(set_to_none=True)


def ce_loss(model, batch, cfg, ignore_index) -> torch.Tensor:
    """objective ce: cross-entropy; objective mse: MSE to the +-1 one-hot (the simplex anchors) -- the
    discriminative twin of a 1-step endpoint SemFlow, to separate the loss from the flow in the ablation."""
    logits = forward_logits(model, batch["image"], int(cfg["space_to_depth"]))
    if cfg["objective"] == "mse":
        k = logits.shape[1]
        lab = batch["label"]
        valid = (lab >= 0) & (lab < k)
        target = F.one_hot(lab.clamp(0, k - 1), k).permute(0, 3, 1, 2).float() * 2 - 1
        err = ((logits.float() - target) ** 2).mean(1)
        return (err * valid).sum() / valid.sum().clamp_min(1)
    return F.cross_entropy(logits.float(), batch["label"], ignore_index=ignore_index if ignore_index is not None else -100)


# ----------------------------------------------------------------------------------------------- batches
class StepBatches:
    """Global batch for step s = a slice of a seeded per-epoch permutation; each process takes its shard."""

    def __init__(self, dataset, batch_size: int, num_processes: int, process_index: int, seed: int,
                 num_workers: int = 0):
        self.ds, self.bs, self.np, self.pi, self.seed = dataset, batch_size, num_processes, process_index, seed
        # Threads decode and augment the batch's samples in parallel (PIL and torch release the GIL); the samples
        # and their order do not depend on it.
        self.pool = None
        if num_workers and num_workers > 0:
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(max_workers=int(num_workers))
        self.global_bs = batch_size * num_processes
        self.steps_per_epoch = max(1, len(dataset) // self.global_bs)
        self._perm_epoch, self._perm = None, None

    def __call__(self, step: int) -> Dict[str, torch.Tensor]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perm = torch.randperm(len(self.ds), generator=g)
            self._perm_epoch = epoch
            self.ds.set_epoch(epoch)
        if len(self.ds) < self.global_bs:  # tiny datasets (tests): sample with wrap-around
            idx = torch.arange(k * self.global_bs, (k + 1) * self.global_bs) % len(self.ds)
            idx = self._perm[idx]
        else:
            idx = self._perm[k * self.global_bs:(k + 1) * self.global_bs]
        idx = idx[self.pi::self.np].tolist()
        items = list(self.pool.map(self.ds.__getitem__, idx)) if self.pool else [self.ds[i] for i in idx]
        return {"image": torch.stack([b["image"] for b in items]), "label": torch.stack([b["label"] for b in items])}


def init_unet_from(unet, folder: str) -> None:
    """Warm start: copy ``<folder>/unet`` weights (a saved SemFlow pipeline) into the freshly built ``unet``.

    The architectures must match exactly; a mismatch names the first differing tensor instead of loading
    part of the weights silently. Optimizer, schedule and step count start fresh (unlike a resume).
    A ``SemFlowUNet2DModel`` may also start from a plain ``UNet2DModel`` of its inner UNet's layout: the inner UNet
    takes its weights, the feature channels of ``conv_in`` start at zero (so the start behaves as the source
    model) and the pretrained trunk stays as built.
    A UNet with fewer ``layers_per_block`` than the source starts from the source's blocks minus the ones
    ``drop_layers`` removes (a smaller student, as BK-SDM)."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from semflow_pipeline.unet_semflow import SemFlowUNet2DModel

    path = os.path.join(folder, "unet")
    if not os.path.isdir(path):
        raise SystemExit(f"init_from: {path} not found (expected a saved SemFlow pipeline folder)")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        src_config = json.load(f)
    src_class = src_config.get("_class_name")
    src = load_file(os.path.join(path, "diffusion_pytorch_model.safetensors"))
    src_layers, dst_layers = src_config.get("layers_per_block"), unet.config.layers_per_block
    if src_layers is not None and dst_layers < src_layers:
        src = drop_layers(src, src_layers, dst_layers)
    target = unet
    if isinstance(unet, SemFlowUNet2DModel) and src_class == UNet2DModel.__name__:
        target = unet.unet
        w = src["conv_in.weight"]
        extra = target.conv_in.weight.shape[1] - w.shape[1]
        if extra > 0:
            src["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
    dst = target.state_dict()
    for name, tensor in dst.items():
        if name not in src or src[name].shape != tensor.shape:
            got = tuple(src[name].shape) if name in src else "missing"
            raise SystemExit(f"init_from: {folder} does not match this config's UNet ({name}: "
                             f"{tuple(tensor.shape)} here, {got} there)")
    unexpected = sorted(set(src) - set(dst))
    if unexpected:
        raise SystemExit(f"init_from: {folder} has weights this config's UNet lacks ({unexpected[0]}, ...)")
    target.load_state_dict(src, strict=True)


def load_kd_unet(folder: str, pipe, device):
    """The frozen UNet of the saved SemFlow pipeline ``folder``, checked to read and predict the same state as
    ``pipe``'s (same codec, fold and prediction type), so its outputs are targets for ``pipe.unet``."""
    from semflow_pipeline import SemFlowPipeline

    src = SemFlowPipeline.from_pretrained(folder)
    checks = [(key, src.config.get(key), pipe.config.get(key)) for key in ("palette", "space_to_depth", "coupling")]
    checks += [(f"unet {key}", src.unet.config[key], pipe.unet.config[key]) for key in ("in_channels", "out_channels")]
    checks.append(("prediction_type", src.scheduler.config.prediction_type, pipe.scheduler.config.prediction_type))
    for name, theirs, ours in checks:
        if theirs != ours:
            raise SystemExit(f"kd_from: {folder} has {name}={theirs!r}, this run {ours!r}")
    return src.unet.to(device).eval().requires_grad_(False)


def drop_layers(state: Dict[str, torch.Tensor], src_layers: int, dst_layers: int) -> Dict[str, torch.Tensor]:
    """A diffusers UNet state dict with ``layers_per_block`` ``src_layers`` -> one for ``dst_layers`` (fewer).

    Down blocks keep their first ``dst_layers`` resnets (and attentions). Up blocks hold one more layer than
    down blocks; they keep their first ``dst_layers`` and their last, so that every kept layer reads a skip of
    the same width as before (the last one reads the level's input, the first ones the level's features)."""
    pattern = re.compile(r"^(.*\b(down|up)_blocks\.\d+\.(?:resnets|attentions)\.)(\d+)(\..*)$")
    out = {}
    for name, tensor in state.items():
        m = pattern.match(name)
        if m is None:
            out[name] = tensor
            continue
        j = int(m.group(3))
        if j < dst_layers:
            out[name] = tensor
        elif m.group(2) == "up" and j == src_layers:  # the up block's last layer
            out[f"{m.group(1)}{dst_layers}{m.group(4)}"] = tensor
    return out


# ----------------------------------------------------------------------------------------------- helpers
def make_lr_lambda(cfg):
    total, warm = int(cfg["train_steps"]), int(cfg["warmup_steps"])
    kind = cfg["lr_schedule"]

    def f(step):
        if kind == "constant":
            return min(1.0, (step + 1) / max(1, warm)) if warm else 1.0
        if kind == "linear":  # diffusers' get_scheduler("linear"): linear warm-up, then linearly down to 0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))
        if kind == "cosine":
            if step < warm:
                return (step + 1) / warm
            p = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        if kind == "onecycle":  # torch OneCycleLR's shape (30% warm-up from lr/25, cosine down to lr/1e4)
            up = max(1, int(0.3 * total))
            if step < up:
                return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / up))
            p = min(1.0, (step - up) / max(1, total - up))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * p))
        raise ValueError(f"unknown lr_schedule {kind!r}: onecycle | cosine | constant | linear")

    return f


def evaluate_quick(cfg, segmenter_fn, val_ds, num_classes, ignore_index) -> float:
    """Val mIoU at the labels' full resolution (segmenter_fn: list of uint8 HxWx3 -> (N,H,W) labels)."""
    from training.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, ignore_index)
    bs = 8
    for i in range(0, len(val_ds), bs):
        pairs = [val_ds.raw(j) for j in range(i, min(i + bs, len(val_ds)))]
        imgs = [p[0].permute(1, 2, 0).numpy() for p in pairs]
        preds = segmenter_fn(imgs)
        for p, (_, lab) in zip(preds, pairs):
            cm.update(p, lab)
    return cm.miou()


def list_checkpoints(ckpt_root: str) -> List[str]:
    """``checkpoint-<step>`` folders, newest first (``.tmp`` / ``.old`` leftovers of an interrupted save excluded)."""
    if not os.path.isdir(ckpt_root):
        return []
    cks = [d for d in os.listdir(ckpt_root) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()
           and os.path.isdir(os.path.join(ckpt_root, d))]
    return [os.path.join(ckpt_root, d) for d in sorted(cks, key=lambda d: -int(d.split("-")[-1]))]


def latest_checkpoint(ckpt_root: str) -> Optional[str]:
    cks = list_checkpoints(ckpt_root)
    return cks[0] if cks else None


def checkpoint_step(path: str) -> int:
    return int(os.path.basename(os.path.normpath(path)).split("-")[-1])


def resume_state(accelerator, requested: str, ckpt_root: str) -> tuple:
    """Loads the checkpoint to resume from; returns ``(path, step)``, ``(None, 0)`` when there is none.

    ``latest`` tries the checkpoints newest first: one that does not load (truncated or corrupt files, a missing
    file) is reported and the previous one is used, so a bad save costs ``checkpointing_steps`` steps, not a
    manual clean-up. A named checkpoint that does not load is a clear error (no silent fallback to another).
    Each ``load_state`` replaces every saved component (model, optimizer, LR schedule, EMA, RNG states), so a
    partial load of a bad checkpoint is fully overwritten by the good one.
    """
    if requested != "latest":
        if not os.path.isdir(requested):
            raise SystemExit(f"--resume_from_checkpoint: no such checkpoint folder: {requested}")
        if not os.path.basename(os.path.normpath(requested)).split("-")[-1].isdigit():
            raise SystemExit(f"--resume_from_checkpoint: {requested} is not a checkpoint-<step> folder")
        ok, detail = verify_checksums(requested)
        if ok is False:
            raise SystemExit(f"--resume_from_checkpoint: could not load {requested}: checksum check failed: {detail} "
                             "(pass an older checkpoint, or 'latest' to use the newest one that verifies)")
        _say_unverified(accelerator, requested, ok)
        try:
            accelerator.load_state(requested)
        except Exception as e:
            raise SystemExit(f"--resume_from_checkpoint: could not load {requested}: {type(e).__name__}: {e}")
        return requested, checkpoint_step(requested)
    failed = []
    for path in list_checkpoints(ckpt_root):
        ok, detail = verify_checksums(path)
        if ok is False:
            accelerator.print(f"checkpoint {path} could not be loaded (checksum check failed: {detail}); "
                              "falling back to the previous checkpoint")
            failed.append(path)
            continue
        _say_unverified(accelerator, path, ok)
        try:
            accelerator.load_state(path)
        except Exception as e:
            first = str(e).splitlines()[0][:200] if str(e) else ""
            accelerator.print(f"checkpoint {path} could not be loaded ({type(e).__name__}: {first}); "
                              "falling back to the previous checkpoint")
            failed.append(path)
            continue
        if failed:
            names = ", ".join(map(os.path.basename, failed))
            accelerator.print(f"resuming from {path} instead of the unreadable {names} (replaced when training "
                              "reaches that step again)")
        return path, checkpoint_step(path)
    if failed:
        raise SystemExit(f"no loadable checkpoint in {ckpt_root}: {', '.join(map(os.path.basename, failed))} all "
                         "failed to load; remove them or start without --resume_from_checkpoint")
    return None, 0


def _say_unverified(accelerator, path: str, ok) -> None:
    if ok is None:
        accelerator.print(f"checkpoint {path} has no {CHECKSUMS_FILE} (saved by an older version): loading it "
                          "unverified")


def replace_dir(src: str, dst: str) -> None:
    """Renames the complete folder ``src`` to ``dst``, replacing an existing ``dst`` (a newer run's checkpoint of
    the same step after resuming from an older one). ``dst`` is first moved aside to ``dst.old`` and deleted only
    after the rename, so a kill at any point leaves either the old or the new complete checkpoint (or an older
    one) under a ``checkpoint-<step>`` name; ``remove_leftovers`` deletes the rest at the next save."""
    old = dst + ".old"
    if os.path.lexists(old):
        shutil.rmtree(old, ignore_errors=True)
    if os.path.lexists(dst):
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(ckpt_root: str) -> None:
    """Deletes ``checkpoint-<step>.tmp`` / ``.old`` folders: the remains of a save or replace that was killed."""
    if os.path.isdir(ckpt_root):
        for d in os.listdir(ckpt_root):
            if d.startswith("checkpoint-") and d.endswith((".tmp", ".old")):
                shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


CHECKSUMS_FILE = "checksums.json"


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: str) -> Dict[str, str]:
    """Records the SHA-256 of every file of a just-saved checkpoint in ``folder/checksums.json`` (fsynced, written
    atomically); ``verify_checksums`` checks them before a resume loads anything. Returns ``{relative path: hash}``."""
    sums = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel != CHECKSUMS_FILE:
                sums[rel] = _sha256(full)
    write_json_atomic(os.path.join(folder, CHECKSUMS_FILE), {"algorithm": "sha256", "files": dict(sorted(sums.items()))})
    return sums


def verify_checksums(folder: str) -> tuple:
    """``(ok, detail)``: ``ok`` is True when every file recorded in ``checksums.json`` is present with its recorded
    SHA-256, False (``detail`` names the files) when one is missing or differs -- a flipped byte inside a tensor
    leaves a valid file that would load silently -- and None when the checkpoint has no (readable) record
    (written before checksums were recorded): it is then loaded unverified, and said so."""
    manifest = os.path.join(folder, CHECKSUMS_FILE)
    if not os.path.isfile(manifest):
        return None, f"no {CHECKSUMS_FILE}"
    try:
        with open(manifest) as f:
            record = json.load(f)
        files = record["files"]
        if record.get("algorithm") != "sha256" or not isinstance(files, dict) or not files:
            raise ValueError("unexpected content")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"{CHECKSUMS_FILE} is unreadable ({type(e).__name__}: {e})"
    bad = []
    for rel, digest in files.items():
        full = os.path.join(folder, *str(rel).split("/"))
        if ".." in str(rel).split("/") or not os.path.isfile(full):
            bad.append(f"{rel} is missing")
        elif _sha256(full) != digest:
            bad.append(f"{rel} differs from the checksum recorded when it was saved")
    if bad:
        return False, "; ".join(bad)
    return True, f"{len(files)} files match {CHECKSUMS_FILE}"


_WRITE_ERROR_HINTS = ("no space left", "disk quota", "read-only file system", "unexpected pos", "file write failed",
                      "permission denied", "file too large", "input/output error")


def is_write_failure(e: BaseException) -> bool:
    """Whether ``e`` comes from the file system refusing a write (full disk, read-only, no permission, I/O error),
    whatever library raised it: ``OSError``, safetensors' ``SafetensorError`` (``IoError ... No space left``) or
    torch's zip writer (``RuntimeError ... unexpected pos`` / ``file write failed``)."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                              errno.EFBIG, errno.EIO):
        return True
    if isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError":
        text = str(e).lower()
        return any(h in text for h in _WRITE_ERROR_HINTS)
    return False


def _free_bytes(path: str) -> Optional[int]:
    p = os.path.abspath(path)
    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def write_failure_message(e: BaseException, what: str, where: str, ckpt_root: Optional[str]) -> str:
    """One paragraph for a failed write: what happened (disk full / read-only / no permission), the free space,
    and which checkpoint is still good to resume from."""
    import errno

    text = str(e).lower()
    code = getattr(e, "errno", None)
    free = _free_bytes(where)  # measured before a partial write is deleted
    if code in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text or "disk quota" in text:
        cause = "the disk is full"
    elif code == errno.EROFS or "read-only file system" in text:
        cause = "the output folder is on a read-only file system"
    elif code in (errno.EACCES, errno.EPERM) or "permission denied" in text:
        cause = "there is no permission to write there"
    elif code == errno.EFBIG or "file too large" in text:
        cause = "a file size limit was reached"
    elif ("unexpected pos" in text or "file write failed" in text) and free is not None and free < 64 * 2**20:
        cause = "the disk is full (a write stopped part-way)"
    elif "unexpected pos" in text or "file write failed" in text:
        cause = "a write stopped part-way (the usual cause is a full disk)"
    else:
        cause = "the file system refused the write"
    free_s = f"; {free / 2**20:.1f} MB free there" if free is not None else ""
    first = " ".join(str(e).split())[:300]
    msg = f"could not write {what} to {where}: {cause}{free_s} ({type(e).__name__}: {first})."
    good = latest_checkpoint(ckpt_root) if ckpt_root else None
    if good:
        msg += (f" The last good checkpoint, {good}, is intact: free some space (or make the folder writable) and "
                "resume with --resume_from_checkpoint latest, or copy it elsewhere.")
    else:
        msg += " No checkpoint had been saved yet."
    return msg


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    """Writes JSON to ``path.tmp``, fsyncs and renames: a kill leaves the old file or the new, never a torn one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_elapsed(path: Optional[str]) -> Optional[float]:
    """``elapsed_s`` from a wall-time JSON, or None when it is missing or unreadable (empty, truncated)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            value = float(json.load(f)["elapsed_s"])
        return value if math.isfinite(value) and value >= 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def truncate_log(log_path: str, step: int) -> int:
    """Keeps ``log.csv``'s header and its rows up to ``step`` (the step resumed from): the rows after it belong to
    the interrupted run and are written again, so they would be duplicated. Unparseable rows (a line cut by a
    kill) are dropped too. Rewritten atomically; returns the number of rows dropped."""
    header = ["step", "loss", "lr", "val_miou", "elapsed_s"]
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    keep, dropped = [], 0
    for r in rows[1:] if rows and rows[0] == header else rows:
        try:
            ok = len(r) == len(header) and int(r[0]) <= step
        except ValueError:
            ok = False
        if ok:
            keep.append(r)
        else:
            dropped += 1
    tmp = log_path + ".tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header] + keep)
    os.replace(tmp, log_path)
    return dropped


def cpu_bf16_support() -> tuple:
    """(whether this CPU runs bf16 matmuls natively, the evidence): AVX512-BF16 or AMX-BF16.

    Read from torch's CPU feature probe (``torch._C._cpu._get_cpu_capability()``, torch >= 2.7; else the older
    ``torch.cpu._is_avx512_bf16_supported``), then ``/proc/cpuinfo`` flags. ``torch.backends.cpu.
    get_cpu_capability()`` alone is not enough: it says ``AVX512`` also for AVX-512 CPUs without BF16.
    """
    flags: Dict[str, bool] = {}
    source = ""
    try:
        cap = torch._C._cpu._get_cpu_capability()
        if isinstance(cap, dict) and "avx512_bf16" in cap:
            flags = {k: bool(cap.get(k)) for k in ("avx512_bf16", "amx_bf16")}
            source = "torch CPU probe"
    except Exception:
        pass
    if not flags:
        try:
            flags = {"avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
                     "amx_bf16": bool(torch.cpu._is_amx_tile_supported())}
            source = "torch.cpu"
        except Exception:
            pass
    if not flags and os.path.isfile("/proc/cpuinfo"):
        try:
            with open("/proc/cpuinfo") as f:
                words = set(f.read().split())
            flags = {k: k in words for k in ("avx512_bf16", "amx_bf16")}
            source = "/proc/cpuinfo"
        except OSError:
            pass
    if not flags:
        return False, "bf16 support could not be detected on this CPU"
    found = [n for k, n in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flags.get(k)]
    try:
        isa = f", vector ISA {torch.backends.cpu.get_cpu_capability()}"
    except Exception:
        isa = ""
    if found:
        return True, f"the CPU has {' and '.join(found)} ({source}{isa})"
    return False, f"the CPU has neither AVX512-BF16 nor AMX-BF16 ({source}{isa})"


def resolve_mixed_precision(requested: Any, use_cpu: bool) -> tuple:
    """``mixed_precision`` config value -> (accelerate's value, the reason, for the log).

    ``auto`` (the default): bf16 on a CUDA GPU that supports it or on a CPU with native bf16 matmuls
    (AVX512-BF16 / AMX); else fp32 (``no``): on other CPUs bf16 autocast is emulated and a training step is
    ~20x slower than fp32. An explicit ``bf16`` / ``fp16`` / ``no`` is used as given. YAML reads an unquoted
    ``no`` as false; false and null mean ``no``.
    """
    if requested is None or requested is False or str(requested).lower() in ("no", "fp32", "none", "false", ""):
        return "no", "set in the config"
    value = str(requested).lower()
    if value != "auto":
        if value not in ("bf16", "fp16", "fp8"):
            raise SystemExit(f"mixed_precision must be auto, bf16, fp16, fp8 or no; got {requested!r}")
        return value, "set in the config"
    if not use_cpu:
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: the GPU ({name}) supports bf16"
        return "no", f"auto: the GPU ({name}) has no bf16 support; fp32"
    ok, why = cpu_bf16_support()
    if ok:
        return "bf16", f"auto: {why}"
    return "no", f"auto: {why}, so bf16 autocast would be emulated (~20x slower per step); fp32"


def plot_log(csv_path: str, png_path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss, vsteps, vmiou = [], [], [], []
    with open(csv_path) as f:
        for r in csv.DictReader(f):
            if r["loss"]:
                steps.append(int(r["step"])); loss.append(float(r["loss"]))
            if r["val_miou"]:
                vsteps.append(int(r["step"])); vmiou.append(float(r["val_miou"]))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(steps, loss); ax[0].set_xlabel("step"); ax[0].set_ylabel("train loss"); ax[0].set_yscale("log")
    ax[1].plot(vsteps, vmiou, "o-"); ax[1].set_xlabel("step"); ax[1].set_ylabel("val mIoU (full res)")
    fig.tight_layout(); fig.savefig(png_path, dpi=100); plt.close(fig)


# -------------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    cfg = load_config(argv)
    try:
        return train(cfg)
    except Exception as e:
        # A full disk, a read-only or unwritable output folder: one message that says so (and which checkpoint is
        # still good), not a SafetensorError / "unexpected pos" traceback.
        if is_write_failure(e):
            raise SystemExit("train_semflow: " + write_failure_message(
                e, "the run's files", cfg["output_dir"], os.path.join(cfg["output_dir"], "checkpoints"))) from e
        raise


def refuse_existing_checkpoints(cfg: Dict[str, Any]) -> List[str]:
    """A run without --resume_from_checkpoint into an output_dir that holds checkpoints would start from scratch
    and replace them one by one: refused, unless --overwrite. Returns the checkpoints that --overwrite deletes."""
    existing = list_checkpoints(os.path.join(cfg["output_dir"], "checkpoints"))
    if not existing or cfg["resume_from_checkpoint"]:
        return []
    if not cfg.get("overwrite"):
        names = ", ".join(os.path.basename(p) for p in existing)
        raise SystemExit(f"train_semflow: {cfg['output_dir']} already holds checkpoints ({names}) from an earlier run. "
                         "Continue it with --resume_from_checkpoint latest, train into a new --output_dir, or pass "
                         "--overwrite to start from scratch and delete them.")
    return existing


def train(cfg: Dict[str, Any]) -> Dict[str, Any]:
    overwritten = refuse_existing_checkpoints(cfg)
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from accelerate.state import AcceleratorState
    # main() may run several times in one process (tests, notebooks): the state singleton would keep the
    # first run's mixed precision. The distributed process group itself survives the reset.
    AcceleratorState._reset_state(reset_partial_state=False)
    out = cfg["output_dir"]
    use_cpu = not torch.cuda.is_available()
    mp, mp_reason = resolve_mixed_precision(cfg["mixed_precision"], use_cpu)
    accelerator = Accelerator(mixed_precision=mp, cpu=use_cpu,
                              project_config=ProjectConfiguration(project_dir=out, automatic_checkpoint_naming=False))
    accelerator.print(f"mixed precision: {mp} ({mp_reason})")
    set_seed(int(cfg["seed"]) + accelerator.process_index)
    is_main = accelerator.is_main_process
    cfg["mixed_precision_used"] = f"{mp} ({mp_reason})"  # config.yaml keeps the requested value too
    accelerator.wait_for_everyone()  # every process has checked the output folder before the main one changes it
    if is_main:
        if overwritten:
            accelerator.print(f"--overwrite: deleting the earlier run's {', '.join(map(os.path.basename, overwritten))}")
            shutil.rmtree(os.path.join(out, "checkpoints"))
            for stale in ("wall_time.json", "result.json", "eval.json"):
                if os.path.isfile(os.path.join(out, stale)):
                    os.remove(os.path.join(out, stale))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump({k: v for k, v in cfg.items()}, f, sort_keys=False)
    cfg["mixed_precision"] = mp  # the model card states the precision the run used

    aug = AugmentConfig(cfg["scale_min"], cfg["scale_max"], cfg["hflip"])
    train_ds = build_dataset(cfg["dataset"], cfg["data_root"], cfg["train_split"], size=tuple(cfg["resolution"]),
                             train=True, aug=aug, preload=cfg["preload"], seed=int(cfg["seed"]),
                             max_samples=cfg["max_train_samples"])
    val_ds = None
    if cfg["val_split"]:
        val_ds = build_dataset(cfg["dataset"], cfg["data_root"], cfg["val_split"], size=None, train=False,
                               preload=cfg["preload"], max_samples=cfg["max_val_samples"])
    info = dataset_info(train_ds)
    k, ignore = len(info["class_names"]), info["ignore_index"]

    pipe = None
    if cfg["objective"] == "semflow":
        pipe = build_pipeline(cfg, info)
        model = pipe.unet
        if cfg["init_from"]:
            init_unet_from(model, cfg["init_from"])
            accelerator.print(f"unet weights initialised from {cfg['init_from']}")
        if pipe.vae is not None:
            pipe.vae.to(accelerator.device)
            if pipe.text_encoder is not None:
                pipe.text_encoder.to(accelerator.device)
    elif cfg["objective"] in ("ce", "mse"):
        s = int(cfg["space_to_depth"])
        h, w = cfg["resolution"]
        if cfg["image_encoder"]:  # the fair baseline for a model with the pretrained trunk: the same trunk, CE only
            model = build_encoder_unet(cfg, 3, 1, s, out_channels=k * s * s)
        else:
            model = build_unet(3 * s * s, k * s * s, (h // s, w // s), cfg["block_out_channels"],
                               cfg["layers_per_block"], cfg["attention_levels"], cfg["norm_num_groups"])
    else:
        raise ValueError(f"objective must be semflow, ce or mse, got {cfg['objective']!r}")
    n_params = sum(p.numel() for p in model.parameters())

    lr = float(cfg["learning_rate"])
    trunk = list(model.encoder.parameters()) if hasattr(model, "encoder") else []
    trunk_ids = {id(p) for p in trunk}
    groups = [{"params": [p for p in model.parameters() if id(p) not in trunk_ids], "lr": lr}]
    if trunk:  # the pretrained trunk moves more slowly than the parts that start from scratch
        groups.append({"params": trunk, "lr": lr * float(cfg["encoder_lr_scale"])})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=float(cfg["weight_decay"]))
    perceptual = ce_weight = None
    disc = d_optimizer = None
    if pipe is not None and (float(cfg["perceptual_weight"]) > 0 or float(cfg["adversarial_weight"]) > 0):
        from training.pretrained import PerceptualLoss
        perceptual = PerceptualLoss().to(accelerator.device)
    if pipe is not None and float(cfg["adversarial_weight"]) > 0:
        if pipe.vae is not None:
            raise SystemExit("adversarial_weight needs pixel mode (the critic reads the predicted photo)")
        disc = FeatureDiscriminator(perceptual.net.out_channels, k, int(cfg["discriminator_width"]))
        # The usual GAN optimiser settings (beta1 = 0): the critic must follow a moving generator.
        d_optimizer = torch.optim.Adam(disc.parameters(), lr=float(cfg["discriminator_lr"]), betas=(0.0, 0.99))
    teacher = None
    if pipe is not None and cfg["teacher"] and (float(cfg["distill_weight"]) > 0 or float(cfg["layout_weight"]) > 0):
        if pipe.vae is not None:
            raise SystemExit("teacher terms need pixel mode (the teacher reads the predicted photo)")
        teacher = load_teacher(cfg["teacher"], accelerator.device)
        if teacher.num_classes != k:
            raise SystemExit(f"teacher {cfg['teacher']} has {teacher.num_classes} classes; this dataset has {k}")
    kd_unet = None
    if pipe is not None and cfg["kd_from"] and float(cfg["kd_weight"]) > 0:
        kd_unet = load_kd_unet(cfg["kd_from"], pipe, accelerator.device)
        accelerator.print(f"distilling from {cfg['kd_from']} (weight {cfg['kd_weight']})")
    if pipe is not None:
        ce_weight = class_weights(train_ds, k, ignore, float(cfg["mask_ce_class_balance"]))
        if ce_weight is not None:
            ce_weight = ce_weight.to(accelerator.device)
            accelerator.print("CE class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(info["class_names"], ce_weight.tolist())))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(cfg))
    ema = None
    if cfg["ema"]:
        from diffusers.training_utils import EMAModel
        ema = EMAModel(model.parameters(), decay=float(cfg["ema_decay"]))
    ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds_plugin is not None:  # DeepSpeed (accelerate launch --config_file training/accelerate/deepspeed_zero2.yaml)
        # No dataloader goes through `prepare`, so DeepSpeed cannot infer the micro batch size: give it ours.
        ds_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(cfg["batch_size"])
    model, optimizer = accelerator.prepare(model, optimizer)
    if disc is not None:  # prepared, so checkpoints save and resume the critic and its optimiser too
        disc, d_optimizer = accelerator.prepare(disc, d_optimizer)
    # The LR schedule is stepped once per optimisation step by us (a prepared one steps num_processes times).
    accelerator.register_for_checkpointing(lr_sched)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    ckpt_root = os.path.join(out, "checkpoints")
    start_step = 0
    resumed_from = None
    if cfg["resume_from_checkpoint"]:
        resumed_from, start_step = resume_state(accelerator, cfg["resume_from_checkpoint"], ckpt_root)
        if resumed_from is None:
            accelerator.print(f"no checkpoint in {ckpt_root}; starting from scratch")
        else:
            accelerator.print(f"resumed from {resumed_from} at step {start_step}")
            newer = [os.path.basename(p) for p in list_checkpoints(ckpt_root) if checkpoint_step(p) > start_step]
            if newer:
                accelerator.print(f"newer checkpoints from the earlier run ({', '.join(reversed(newer))}) are replaced "
                                  "as training reaches their steps")

    batches = StepBatches(train_ds, int(cfg["batch_size"]), accelerator.num_processes, accelerator.process_index,
                          int(cfg["seed"]), int(cfg["num_workers"] or 0))
    total = int(cfg["train_steps"])
    log_path = os.path.join(out, "log.csv")
    if is_main and (start_step == 0 or not os.path.isfile(log_path)):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["step", "loss", "lr", "val_miou", "elapsed_s"])
    elif is_main:
        dropped = truncate_log(log_path, start_step)
        if dropped:
            accelerator.print(f"log.csv: dropped {dropped} row(s) after step {start_step} (they are logged again)")
    tb = None
    if is_main and cfg["tensorboard"]:
        try:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(os.path.join(out, "tb"))
        except Exception:  # tensorboard not installed: CSV only
            tb = None

    plain = accelerator.unwrap_model(model)

    def segment_fn_factory():
        if pipe is not None:
            return lambda imgs: pipe.segment(imgs, num_inference_steps=int(cfg["val_num_inference_steps"]),
                                             batch_size=8, output_type="np").labels
        seg = BaselineSegmenter(plain, info["class_names"], ignore, baseline_resolution(cfg), int(cfg["space_to_depth"]))
        return lambda imgs: seg.segment(imgs)

    def run_val() -> float:
        was_training = plain.training
        plain.eval()
        if ema is not None:
            ema.store(plain.parameters()); ema.copy_to(plain.parameters())
        # The prepared model's forward runs under the training autocast (bf16): these periodic numbers can
        # differ from evaluate.py's fp32 ones in the third decimal; the final table is evaluate.py's.
        with torch.no_grad():
            miou = evaluate_quick(cfg, segment_fn_factory(), val_ds, k, ignore)
        if ema is not None:
            ema.restore(plain.parameters())
        plain.train(was_training)
        return miou

    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + accelerator.process_index)
    t0 = time.time()
    prior_elapsed = 0.0
    state_file = os.path.join(out, "wall_time.json")
    if start_step:
        # The checkpoint's own record (written inside it before its rename), then the run's latest one; a missing
        # or broken file (e.g. empty after a crash) costs only the wall-time total, never the resume.
        own = read_elapsed(os.path.join(resumed_from, "wall_time.json")) if resumed_from else None
        prior_elapsed = own if own is not None else read_elapsed(state_file)
        if prior_elapsed is None:
            if os.path.isfile(state_file):
                accelerator.print(f"{state_file} is unreadable; the reported wall time restarts from this resume")
            prior_elapsed = 0.0
    model.train()
    bar = tqdm(range(start_step, total), initial=start_step, total=total, disable=not is_main, desc="train")
    running, n_run = 0.0, 0
    last_val = None
    for step in bar:
        # Per-step generator state, so a resumed run draws the same t / perturbations as an uninterrupted one.
        gen.manual_seed((int(cfg["seed"]) * 1000 + accelerator.process_index) * 1_000_003 + step)
        batch = {k_: v.to(accelerator.device) for k_, v in batches(step).items()}
        critic_inputs = {}
        with accelerator.autocast():
            if pipe is not None:
                loss = semflow_loss(pipe, batch, cfg, gen, model, perceptual, ce_weight, disc, critic_inputs, teacher,
                                    kd_unet)
            else:
                loss = ce_loss(model, batch, cfg, ignore)
        accelerator.backward(loss)
        if cfg["max_grad_norm"]:
            accelerator.clip_grad_norm_(model.parameters(), float(cfg["max_grad_norm"]))
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        if disc is not None:
            critic_step(disc, d_optimizer, critic_inputs, accelerator)
        if ema is not None:
            ema.step(plain.parameters())
        done = step + 1
        running += loss.detach().float().item(); n_run += 1
        elapsed = prior_elapsed + time.time() - t0
        row = None
        if done % int(cfg["log_every"]) == 0 or done == total:
            mean_loss = accelerator.gather(torch.tensor([running / n_run], device=accelerator.device)).mean().item()
            row = [done, f"{mean_loss:.6f}", f"{lr_sched.get_last_lr()[0]:.3e}", "", f"{elapsed:.1f}"]
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_sched.get_last_lr()[0]:.2e}")
            if tb is not None:
                tb.add_scalar("train/loss", mean_loss, done)
            running, n_run = 0.0, 0
        if val_ds is not None and cfg["val_every"] and (done % int(cfg["val_every"]) == 0 or done == total):
            if is_main:
                last_val = run_val()
                row = row or [done, "", "", "", f"{elapsed:.1f}"]
                row[3] = f"{last_val:.4f}"
                accelerator.print(f"step {done}: val mIoU {last_val:.4f}")
                if tb is not None:
                    tb.add_scalar("val/miou", last_val, done)
            accelerator.wait_for_everyone()
        if row is not None and is_main:
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow(row)
        if cfg["checkpointing_steps"] and done % int(cfg["checkpointing_steps"]) == 0 and done < total:
            accelerator.wait_for_everyone()
            path = os.path.join(ckpt_root, f"checkpoint-{done}")
            # Write to a temporary name and rename when complete: a run killed mid-save never leaves a
            # half-written "latest" checkpoint behind. Leftovers of a killed save (.tmp, .old) are removed first.
            if is_main:
                remove_leftovers(ckpt_root)
            accelerator.wait_for_everyone()
            try:
                accelerator.save_state(path + ".tmp")
                accelerator.wait_for_everyone()
                if is_main:
                    # The checksum of every file the resume will load, recorded before the rename: resume verifies
                    # them and falls back to an older checkpoint when one differs (a flipped byte stays loadable).
                    write_checksums(path + ".tmp")
                    write_json_atomic(os.path.join(path + ".tmp", "wall_time.json"), {"elapsed_s": elapsed, "step": done})
                    replace_dir(path + ".tmp", path)  # resumed from an older checkpoint: replaces this step's old one
            except Exception as e:
                if not is_write_failure(e):
                    raise
                msg = write_failure_message(e, f"checkpoint-{done}", ckpt_root, ckpt_root)
                # The partial save is deleted (it only holds space); the older checkpoints were never touched.
                shutil.rmtree(path + ".tmp", ignore_errors=True)
                raise SystemExit("train_semflow: " + msg) from e
            if is_main:
                write_json_atomic(state_file, {"elapsed_s": elapsed, "step": done})
                limit = cfg["checkpoints_total_limit"]
                if limit:
                    # Only this run's checkpoints count: after resuming from an older one, the previous run's
                    # newer checkpoints (step > done) wait to be replaced, and must not push out the ones just made.
                    cks = [p for p in list_checkpoints(ckpt_root) if checkpoint_step(p) <= done]
                    for p in cks[int(limit):]:
                        shutil.rmtree(p, ignore_errors=True)
            accelerator.wait_for_everyone()
            if cfg["stop_at_step"] and done >= int(cfg["stop_at_step"]):
                accelerator.print(f"stopping at step {done} (stop_at_step); resume with --resume_from_checkpoint latest")
                accelerator.end_training()
                return {"steps": done, "stopped": True}
    bar.close()
    accelerator.wait_for_everyone()
    wall = prior_elapsed + time.time() - t0
    result = {"steps": total, "wall_time_s": wall, "params": n_params, "final_val_miou": last_val,
              "hardware": hardware_string(accelerator), "mixed_precision": f"{mp} ({mp_reason})"}
    if is_main:
        if ema is not None:
            ema.copy_to(plain.parameters())
        plain.eval()
        final_dir = os.path.join(out, "final")
        if pipe is not None:
            pipe.save_pretrained(final_dir)
        else:
            BaselineSegmenter(plain, info["class_names"], ignore, baseline_resolution(cfg),
                              int(cfg["space_to_depth"]), info["colors"], cfg["objective"]).save_pretrained(final_dir)
        try:
            plot_log(log_path, os.path.join(out, "training_curves.png"))
        except Exception as e:  # a plot must never lose a finished run
            print(f"plot failed: {e}")
        result["final_dir"] = final_dir
        table = None
        if cfg["final_eval"] and val_ds is not None:
            from training.evaluate import evaluate_model, format_results
            res = evaluate_model(final_dir, val_ds, cfg["eval_num_inference_steps"] if pipe is not None else [1])
            table = format_results(res)
            result["eval"] = res
            with open(os.path.join(out, "eval.json"), "w") as f:
                json.dump(res, f, indent=2)
            print(table)
        from training.model_card import write_model_card
        write_model_card(final_dir, cfg, info, result, table, hardware=hardware_string(accelerator))
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({k_: v for k_, v in result.items() if k_ != "eval"}, f, indent=2)
        if tb is not None:
            tb.close()
    accelerator.end_training()
    return result


def baseline_resolution(cfg) -> tuple:
    """(H, W) the baseline segments at: the crop size, or its aspect scaled to ``processing_resolution``."""
    h, w = cfg["resolution"]
    pr = cfg["processing_resolution"]
    if not pr:
        return (h, w)
    m = 8 * int(cfg["space_to_depth"])  # 3 downsamplings of the folded grid (block_out_channels has 4 levels)
    s = pr / max(h, w)
    return (max(m, round(h * s / m) * m), max(m, round(w * s / m) * m))


def hardware_string(accelerator) -> str:
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    return f"{accelerator.num_processes} process(es), {dev}, torch {torch.__version__}, mixed_precision={accelerator.mixed_precision}"


if __name__ == "__main__":
    main()
