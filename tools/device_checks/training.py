"""Model and training checks: fp32 agreement with the CPU, short runs in every precision,
resume of the grad scaler, channels_last."""
from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import numpy as np
import torch

from tools.device_checks.common import (
    Context,
    Figures,
    build_trainer,
    load,
    no_tf32,
    recipe_name,
    record_losses,
    rel_l2,
    require,
    start_rate,
    still_overrides,
    train_overrides,
)

# Classes of the models built without a dataset (the agreement check).
AGREE_CLASSES = 24
# Normalised pixels lie within about +-3: a few float32 roundings stay below this.
AUGMENT_TOL = 1e-5


def fp32_agreement(ctx: Context, config: Path) -> Figures:
    """Eval-mode features of the config's model: CPU fp32 vs ``ctx.device`` fp32, TF32 off.

    The device side uses channels_last when the config does (as ``test.py``
    does on CUDA), so ``--cpu`` compares the CPU in both memory formats.
    """
    from modeling import build_model

    plan = ctx.plan
    h, w = plan.agree_size
    attention = bool(load(config).get("MSCMNET", {}).get("ATTENTION"))
    if attention:
        # MSCMNet's attention normalises each channel over layer3's positions: over the 2
        # of a 32x16 input that is nearly a sign, and float rounding grows about 4x per
        # block (1e-6 at layer3, 1e-3 after the four blocks, in either memory format);
        # from 64x32 (8 positions) the features agree to 2e-6.
        h, w = max(h, 64), max(w, 32)
    # The network is built for the size it is given (MSCMNet's attention is sized by it).
    size = f"{h},{w}"
    cfg = load(config, ["MODEL.DEVICE", "cpu", "DATA.SIZE_TRAIN", size, "DATA.SIZE_TEST", size])
    torch.manual_seed(0)
    model = build_model(cfg, AGREE_CLASSES).eval()
    b = plan.agree_batch
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(b, 3, h, w, generator=gen)
    modality = torch.tensor([0] * (b // 2) + [1] * (b - b // 2))
    with torch.no_grad():
        reference = model(img, modality)
    fmt = torch.channels_last if cfg.TRAIN.CHANNELS_LAST else torch.contiguous_format
    moved = copy.deepcopy(model).to(ctx.device, memory_format=fmt)
    with no_tf32(), torch.no_grad():
        out = moved(img.to(ctx.device).contiguous(memory_format=fmt), modality.to(ctx.device))
    err = rel_l2(out, reference)
    figures: Figures = {"dataset": cfg.DATA.DATASET_NAME, "model": cfg.MODEL.NAME,
                        "input": f"{b}x3x{h}x{w}", "feature_dim": int(reference.shape[1]),
                        "channels_last": bool(cfg.TRAIN.CHANNELS_LAST), "rel_l2": err,
                        "tolerance": plan.agree_tol}
    require(figures, tuple(out.shape) == tuple(reference.shape),
            f"feature shape {tuple(out.shape)} vs {tuple(reference.shape)}")
    require(figures, math.isfinite(err) and err <= plan.agree_tol,
            f"relative L2 error {err:.3e} above {plan.agree_tol:.0e}")
    return figures


def _check_precision(figures: Figures, trainer: object, ctx: Context, precision: str) -> None:
    """The trainer runs the precision the keys asked for (only CUDA has mixed precision)."""
    amp_on = ctx.cuda and precision != "fp32"
    want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    require(figures, trainer.amp == amp_on and (not amp_on or trainer.amp_dtype == want),
            f"trainer precision {figures['engine_precision']}, asked for {precision}")
    require(figures, trainer.scaler.is_enabled() == (amp_on and precision == "fp16"),
            "grad scaler " + ("on" if trainer.scaler.is_enabled() else "off")
            + f" with {precision}")


def _precision_name(trainer: object) -> str:
    return str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp else "float32"


def short_run(ctx: Context, config: Path, precision: str) -> Figures:
    """The first ``train_iters`` iterations of the config's schedule in ``precision``, on
    the still dataset: every loss finite and falling (mean of the first ``loss_window``
    iterations vs the last)."""
    plan = ctx.plan
    run = f"{recipe_name(config).replace('/', '-')}-{precision}"
    cfg = load(config, still_overrides(ctx, run, plan.train_iters, None, precision))
    trainer = build_trainer(cfg, ctx.device)
    losses = record_losses(trainer)
    trainer.train_one_epoch(1)
    win = plan.loss_window
    first, last = float(np.mean(losses[:win])), float(np.mean(losses[-win:]))
    figures: Figures = {"precision": precision, "engine_precision": _precision_name(trainer),
                        "grad_scaler": trainer.scaler.is_enabled(),
                        "batch": cfg.DATA.TRAIN_BATCH_SIZE,
                        "size": "x".join(map(str, plan.train_size)),
                        "iterations": len(losses), "first_mean": first, "last_mean": last,
                        "losses": [round(v, 5) for v in losses]}
    _check_precision(figures, trainer, ctx, precision)
    require(figures, len(losses) == plan.train_iters,
            f"{len(losses)} iterations, expected {plan.train_iters}")
    require(figures, all(math.isfinite(v) for v in losses), "a non-finite loss")
    require(figures, last < first, f"loss did not fall: first {first:.4f}, last {last:.4f}")
    return figures


def resume_with_scaler(ctx: Context, config: Path) -> Figures:
    """Train one epoch (fp16 on CUDA), save, resume in a new trainer: the grad scaler's
    state, the weights and the counters come back, and the next epoch trains."""
    from engine.checkpoint import load_checkpoint

    plan = ctx.plan
    precision = "fp16" if ctx.cuda else "fp32"
    over = [*still_overrides(ctx, "resume", plan.resume_iters, 1, precision),
            *start_rate(config)]
    first = build_trainer(load(config, over), ctx.device)
    first.fit()
    path = Path(first.cfg.TRAIN.OUTPUT_PATH) / "last.pth"
    ckpt = load_checkpoint(path)
    second = build_trainer(load(config, [*over, "TRAIN.MAX_EPOCHS", "2"]), ctx.device)
    fresh = second.scaler.state_dict()
    second.resume(path)
    restored = second.scaler.state_dict()
    figures: Figures = {"precision": precision, "engine_precision": _precision_name(second),
                        "grad_scaler": second.scaler.is_enabled(),
                        "saved_scaler": ckpt["scaler"], "fresh_scaler": fresh,
                        "restored_scaler": restored, "epoch": second.epoch,
                        "iteration": second.iteration}
    _check_precision(figures, second, ctx, precision)
    require(figures, restored == ckpt["scaler"] == first.scaler.state_dict(),
            f"scaler state after resume {restored} != saved {ckpt['scaler']}")
    if second.scaler.is_enabled():
        require(figures, restored != fresh, "the saved scaler state equals a fresh one: the "
                "check would not see a lost state")
    weights = second.model.state_dict()
    require(figures, all(torch.equal(weights[k].cpu(), v.cpu()) for k, v in ckpt["model"].items()),
            "weights after resume differ from the checkpoint's")
    require(figures, (second.epoch, second.iteration) == (1, plan.resume_iters),
            f"resumed at epoch {second.epoch}, iteration {second.iteration}")
    losses = record_losses(second)
    second.fit()
    figures["losses_after_resume"] = [round(v, 5) for v in losses]
    require(figures, len(losses) == plan.resume_iters and all(map(math.isfinite, losses)),
            "the epoch after the resume did not train with finite losses")
    return figures


def channels_last_loss(ctx: Context, config: Path) -> Figures:
    """First-step loss with TRAIN.CHANNELS_LAST on vs off (same weights, same batch), in
    fp32 (TF32 off) and, on CUDA, in bf16. On the CPU, which the engine keeps in the
    contiguous format, the check converts the model and batch itself."""
    plan = ctx.plan
    figures: Figures = {}
    for precision in ("fp32", "bf16") if ctx.cuda else ("fp32",):
        losses = {}
        for on in (True, False):
            over = still_overrides(ctx, f"channels-last-{precision}-{on}", 1, None, precision, 0)
            trainer = build_trainer(load(config, [*over, "TRAIN.CHANNELS_LAST",
                                                  "yes" if on else "no"]), ctx.device)
            if ctx.cuda:
                require(figures, trainer.channels_last == on,
                        f"TRAIN.CHANNELS_LAST {on} but the trainer uses {trainer.channels_last}")
            elif on:
                trainer.memory_format = torch.channels_last
                trainer.model.to(memory_format=torch.channels_last)
            trainer.sampler.set_epoch(1)
            batch = next(iter(trainer.loader))
            with no_tf32() if precision == "fp32" else contextlib.nullcontext():
                terms = trainer.train_step(batch, 1, 1)
            losses[on] = float(sum(terms.values()))
        rel = abs(losses[True] - losses[False]) / max(abs(losses[False]), 1e-12)
        tol = plan.cl_tol_fp32 if precision == "fp32" else plan.cl_tol_amp
        figures[precision] = {"loss_channels_last": losses[True], "loss_contiguous": losses[False],
                              "rel_diff": rel, "tolerance": tol}
        require(figures, rel <= tol, f"{precision}: first-step loss differs by {rel:.3e} "
                f"(relative) between channels_last and contiguous, above {tol:.0e}")
    figures["forced_on_cpu"] = not ctx.cuda
    return figures


def augment_on_device(ctx: Context, config: Path) -> Figures:
    """Training batches of the config (with DATA.VISIBLE_COPY) finished on ``ctx.device``
    (normalisation, random erasing, channel rules) equal the same batches finished on
    the CPU: the same float32 operations, so at most a rounding apart (the figures say
    whether they are bit-identical)."""
    import data
    from data.build import make_train_loader

    plan = ctx.plan
    over = train_overrides(ctx, "augment", plan.train_size, 16, 3, None, "fp32", 0)
    cfg = load(config, [*over, "DATA.SAMPLE_ID_INSTANCE", "4", "DATA.VISIBLE_COPY", "yes"])
    dataset = data.build_dataset(cfg, verbose=False)
    finished = []
    for where in (None, ctx.device):  # None: finished in this process, as without a GPU
        loader, sampler = make_train_loader(cfg, dataset, verbose=False, device=where)
        sampler.set_epoch(1)
        finished.append([b["img"] for b in loader])
    on_cpu, on_device = finished
    worst = max(float((a - b.cpu()).abs().max()) for a, b in zip(on_cpu, on_device))
    figures: Figures = {"config": recipe_name(config), "batches": len(on_device),
                        "images": sum(b.shape[0] for b in on_device),
                        "re_prob": cfg.DATA.RE_PROB, "channel_aug_prob": cfg.DATA.CHANNEL_AUG_PROB,
                        "max_abs_diff": worst, "bit_identical": worst == 0.0}
    require(figures, all(b.device.type == ctx.device.type for b in on_device),
            "the finished images are not on the device")
    require(figures, worst <= AUGMENT_TOL,
            f"device and CPU finishing differ by up to {worst:.3e} (bound {AUGMENT_TOL:.0e})")
    return figures
