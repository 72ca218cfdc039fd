"""Throughput: training (the model-only ceiling vs the whole engine), feature extraction,
and the model-only step under torch.compile (run in a child process, so that a slow or
failing compilation is bounded by a timeout).

    python -m tools.device_checks.throughput SPEC.json OUT.json   (the compile child)
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools.device_checks.common import (  # noqa: E402
    CONFIG_DIR,
    REPO,
    Context,
    Figures,
    build_trainer,
    load,
    require,
    synchronize,
    train_overrides,
)

CONFIG = CONFIG_DIR / "agw/sysumm.ini"


# Seconds of NVML samples dropped at the start of a measured block.
NVML_SETTLE_S = 1.0


def _speed_overrides(ctx: Context, batch: int, run: str) -> list[str]:
    plan = ctx.plan
    precision = "bf16" if ctx.cuda else "fp32"
    return [*train_overrides(ctx, run, plan.speed_size, batch, plan.speed_iters, None, precision,
                             plan.speed_workers), "TRAIN.CHANNELS_LAST", "yes"]


def fixed_batch(trainer: Any) -> dict[str, torch.Tensor]:
    """One finished training batch on the trainer's device, in its memory format."""
    trainer.sampler.set_epoch(0)
    batch = next(iter(trainer.loader))
    return {"img": batch["img"].to(trainer.device, memory_format=trainer.memory_format),
            "pid": batch["pid"].to(trainer.device),
            "modality": batch["modality"].to(trainer.device)}


def model_steps(trainer: Any, batch: dict[str, torch.Tensor], steps: int,
                model: torch.nn.Module | None = None) -> float:
    """Images/s of ``steps`` forward, loss, backward and optimizer steps on ``batch``
    with the trainer's criterion, optimizer, autocast and scaler (``model`` or its own)."""
    model = trainer.model if model is None else model
    img, pid, modality = batch["img"], batch["pid"], batch["modality"]
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp):
            loss, _ = trainer.criterion(model(img, modality), pid, modality)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    synchronize(trainer.device)
    return steps * img.shape[0] / (time.perf_counter() - start)


@contextlib.contextmanager
def gpu_busy(trainer: Any, out: Figures) -> Iterator[None]:
    """Fill ``out['gpu_busy']`` (fraction of the block's wall time) and ``out['gpu_busy_method']``.

    NVML's utilization (``torch.cuda.utilization``, needs pynvml) sampled every
    50 ms after the block's first NVML_SETTLE_S, when available; else the CUDA-event
    time of each ``train_step`` over the wall time, an upper bound (a step's own idle
    gaps count as busy).
    """
    device = trainer.device
    if device.type != "cuda":
        out.update(gpu_busy=None, gpu_busy_method="not measured on the CPU")
        yield
        return
    try:
        torch.cuda.utilization(device)
        nvml = True
    except Exception:  # noqa: BLE001 - pynvml missing or NVML unusable
        nvml = False
    if nvml:
        samples: list[int] = []
        stop = threading.Event()
        # NVML averages over its last sample period (up to 1 s): samples from the first
        # second still describe what ran before.
        settled = time.monotonic() + NVML_SETTLE_S

        def poll() -> None:
            while not stop.wait(0.05):
                if time.monotonic() >= settled:
                    samples.append(torch.cuda.utilization(device))

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        out.update(gpu_busy=float(np.mean(samples)) / 100 if samples else None,
                   gpu_busy_method=f"NVML utilization sampled every 50 ms after the first "
                                   f"{NVML_SETTLE_S:g} s")
        return
    events = []
    step = trainer.train_step

    def timed(batch: dict[str, torch.Tensor], epoch: int, it: int) -> dict[str, float]:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        terms = step(batch, epoch, it)
        end.record()
        events.append((begin, end))
        return terms

    trainer.train_step = timed
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        wall = time.perf_counter() - start
        del trainer.train_step
    busy = sum(b.elapsed_time(e) for b, e in events) / 1000
    out.update(gpu_busy=busy / wall, gpu_busy_method="CUDA events around each train_step "
               "over wall time (pynvml not installed); an upper bound")


def training(ctx: Context, batch: int) -> Figures:
    """ResNet-50 (agw/sysumm.ini) at speed_size: model-only ceiling and the engine's epoch."""
    plan = ctx.plan
    trainer = build_trainer(load(CONFIG, _speed_overrides(ctx, batch, f"speed-{batch}")),
                            ctx.device)
    trainer.train_one_epoch(1)  # warm-up: workers, allocator, cudnn autotuning
    fixed = fixed_batch(trainer)
    model_steps(trainer, fixed, plan.speed_warmup)
    ceiling = model_steps(trainer, fixed, plan.speed_iters)
    figures: Figures = {"config": CONFIG.name, "model": trainer.cfg.MODEL.NAME,
                        "size": "x".join(map(str, plan.speed_size)), "batch": batch,
                        "precision": str(trainer.amp_dtype).removeprefix("torch.")
                        if trainer.amp else "float32",
                        "channels_last": trainer.channels_last, "workers": plan.speed_workers,
                        "decoded_cache": True, "iterations": plan.speed_iters}
    with gpu_busy(trainer, figures):
        synchronize(ctx.device)
        start = time.perf_counter()
        record = trainer.train_one_epoch(2)
        synchronize(ctx.device)
        elapsed = time.perf_counter() - start
    engine = trainer.iters_per_epoch * batch / elapsed
    figures.update(ceiling_img_s=ceiling, engine_img_s=engine, engine_over_ceiling=engine / ceiling,
                   engine_logged_img_s=record["images_per_s"])
    require(figures, engine > 0 and ceiling > 0 and np.isfinite(record["loss"]),
            "no throughput measured")
    return figures


def inference(ctx: Context) -> Figures:
    """Feature extraction (``engine.inference.extract_record_features``) of
    ``infer_images`` training images at speed_size: the second of two passes."""
    import data
    from engine.inference import extract_record_features
    from modeling import build_model

    plan = ctx.plan
    h, w = plan.speed_size
    cfg = load(CONFIG, [*_speed_overrides(ctx, 64, "inference"), "DATA.SIZE_TEST", f"{h},{w}"])
    dataset = data.build_dataset(cfg, verbose=False)
    records = (dataset.train * (plan.infer_images // len(dataset.train) + 1))[:plan.infer_images]
    fmt = torch.channels_last if ctx.cuda else torch.contiguous_format
    model = build_model(cfg, dataset.num_classes).to(ctx.device, memory_format=fmt).eval()
    extract_record_features(cfg, model, records, ctx.device, "inference")  # cache, autotuning
    synchronize(ctx.device)
    start = time.perf_counter()
    feats = extract_record_features(cfg, model, records, ctx.device, "inference")
    synchronize(ctx.device)
    seconds = time.perf_counter() - start
    figures: Figures = {"config": CONFIG.name, "images": len(records), "size": f"{h}x{w}",
                        "batch": cfg.DATA.TEST_BATCH_SIZE, "workers": cfg.DATA.NUM_WORKERS,
                        "precision": "autocast " + cfg.TRAIN.AMP_DTYPE if ctx.cuda else "float32",
                        "seconds": seconds, "img_s": len(records) / seconds}
    require(figures, tuple(feats.shape) == (len(records), model.feat_dim)
            and bool(torch.isfinite(feats).all()), "features of the wrong shape or not finite")
    return figures


def compile_speedup(ctx: Context) -> Figures:
    """Model-only steps with and without ``torch.compile(model)`` (after warm-up), batch 64
    on a GPU, in a child process bounded by the time budget."""
    plan = ctx.plan
    batch = plan.speed_batches[0]
    timeout = min(plan.subprocess_timeout, ctx.remaining())
    figures: Figures = {"backend": plan.compile_backend, "batch": batch, "timeout_s": timeout}
    if timeout < 30:
        require(figures, False, "skipped: the time budget is spent")
        return figures
    spec = {"config": str(CONFIG), "overrides": _speed_overrides(ctx, batch, "compile"),
            "device": str(ctx.device), "steps": plan.compile_steps,
            "warmup": plan.speed_warmup, "backend": plan.compile_backend}
    spec_path, out_path = ctx.workdir / "compile_spec.json", ctx.workdir / "compile.json"
    spec_path.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([sys.executable, "-m", "tools.device_checks.throughput",
                               str(spec_path), str(out_path)], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        require(figures, False, f"compilation and timing took over {timeout:.0f} s")
        return figures
    if proc.returncode != 0:
        tail = (proc.stdout[-800:] + proc.stderr[-1200:]).strip().replace("\n", " | ")
        require(figures, False, f"child exit {proc.returncode}: {tail}")
        return figures
    figures.update(json.loads(out_path.read_text()))
    return figures


def _compile_child(spec_path: str, out_path: str) -> None:
    """Measure eager and compiled model-only steps as ``spec_path`` says; write JSON."""
    from engine.logger import setup_logger

    spec = json.loads(Path(spec_path).read_text())
    device = torch.device(spec["device"])
    cfg = load(spec["config"], spec["overrides"])
    setup_logger(Path(cfg.TRAIN.OUTPUT_PATH), console=False)
    trainer = build_trainer(cfg, device)
    batch = fixed_batch(trainer)
    steps, warmup = spec["steps"], spec["warmup"]
    model_steps(trainer, batch, warmup)
    eager = model_steps(trainer, batch, steps)
    compiled = torch.compile(trainer.model, backend=spec["backend"])
    start = time.perf_counter()
    model_steps(trainer, batch, warmup, compiled)
    compile_s = time.perf_counter() - start
    fast = model_steps(trainer, batch, steps, compiled)
    Path(out_path).write_text(json.dumps({
        "eager_img_s": eager, "compiled_img_s": fast, "speedup": fast / eager,
        "compile_and_warmup_s": compile_s, "steps": steps, "torch": torch.__version__}))


if __name__ == "__main__":
    _compile_child(sys.argv[1], sys.argv[2])
