"""What every device check shares: the sizes of a mode, the run context, results, configs."""
from __future__ import annotations

import contextlib
import gc
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from yacs.config import CfgNode

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"

# TRAIN keys of each precision a check trains in.
PRECISIONS = {"auto": ["TRAIN.AMP", "yes", "TRAIN.AMP_DTYPE", "auto"],
              "fp32": ["TRAIN.AMP", "no"],
              "bf16": ["TRAIN.AMP", "yes", "TRAIN.AMP_DTYPE", "bf16"],
              "fp16": ["TRAIN.AMP", "yes", "TRAIN.AMP_DTYPE", "fp16"]}

# No random augmentation: every batch of the still dataset holds the same images (in
# some order), so a short run's loss falls only by learning.
STILL = ["DATA.SAMPLE_ID_INSTANCE", "2", "DATA.PADDING", "0", "DATA.FLIP_PROB", "0",
         "DATA.RE_PROB", "0", "DATA.CHANNEL_AUG_PROB", "0", "DATA.GRAY_PROB_VISIBLE", "0",
         "DATA.GRAY_PROB_INFRARED", "0", "DATA.CHANNEL_AUG_VISIBLE", "none",
         "DATA.CHANNEL_AUG_INFRARED", "none", "DATA.CHANNEL_AUG_COPY", "none"]
# 2 identities x (2 visible + 2 infrared): all of the still dataset's training images.
STILL_BATCH = 8

Figures = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of one mode; (height, width) sizes.

    Attributes:
        image_size: size of the drawn images.
        agree_size, agree_batch, agree_tol: fp32 agreement input and its bound on the
            relative L2 error of the features.
        train_size, train_iters, loss_window, precisions: the short training runs
            (first and last ``loss_window`` iterations are compared).
        workers: loader workers of the short runs.
        resume_iters: iterations per epoch of the resume check (2 epochs).
        cl_tol_fp32, cl_tol_amp: channels_last bound on the relative loss difference.
        eval_dim, sysu_trials, big, huge, huge_ids: evaluation sizes (feature width,
            SYSU galleries, N of the N x N cases, identities of the largest).
        device_chunk: distance elements per chunk on the device side of the identity
            check (None = the engine's default).
        huge_chunk: a second chunk size timed on the largest case.
        speed_size, speed_batches, speed_iters, speed_warmup, speed_workers: training
            throughput (timed and warm-up iterations, loader workers).
        infer_images: images of the feature-extraction throughput.
        compile_backend, compile_steps: torch.compile backend and timed steps.
        subprocess_timeout: seconds allowed to torchrun, test.py and the compile child.
    """

    image_size: tuple[int, int]
    agree_size: tuple[int, int]
    agree_batch: int
    agree_tol: float
    train_size: tuple[int, int]
    train_iters: int
    loss_window: int
    precisions: tuple[str, ...]
    workers: int
    resume_iters: int
    cl_tol_fp32: float
    cl_tol_amp: float
    eval_dim: int
    sysu_trials: int
    big: int
    huge: int
    huge_ids: int
    device_chunk: int | None
    huge_chunk: int
    speed_size: tuple[int, int]
    speed_batches: tuple[int, ...]
    speed_iters: int
    speed_warmup: int
    speed_workers: int
    infer_images: int
    compile_backend: str
    compile_steps: int
    subprocess_timeout: int


GPU_PLAN = Plan(image_size=(128, 64), agree_size=(128, 64), agree_batch=4, agree_tol=1e-4,
                train_size=(64, 32), train_iters=30, loss_window=6,
                precisions=("bf16", "fp16", "fp32"), workers=2, resume_iters=4,
                cl_tol_fp32=1e-3, cl_tol_amp=3e-2, eval_dim=2048, sysu_trials=10,
                big=20_000, huge=100_000, huge_ids=10_000, device_chunk=None,
                huge_chunk=1 << 26,
                speed_size=(288, 144), speed_batches=(64, 128), speed_iters=100,
                speed_warmup=5, speed_workers=8, infer_images=4096,
                compile_backend="inductor", compile_steps=20, subprocess_timeout=300)

CPU_PLAN = Plan(image_size=(64, 32), agree_size=(32, 16), agree_batch=2, agree_tol=1e-4,
                train_size=(32, 16), train_iters=10, loss_window=3, precisions=("fp32",),
                workers=0, resume_iters=2, cl_tol_fp32=1e-3, cl_tol_amp=3e-2, eval_dim=32,
                sysu_trials=1, big=1500, huge=2000, huge_ids=200, device_chunk=1 << 18,
                huge_chunk=1 << 18,
                speed_size=(32, 16), speed_batches=(16,), speed_iters=2, speed_warmup=1,
                speed_workers=1, infer_images=64, compile_backend="eager", compile_steps=2,
                subprocess_timeout=300)


@dataclass
class Context:
    """Where the checks run.

    Attributes:
        device: ``cuda`` or ``cpu`` (``--cpu``).
        plan: the mode's sizes.
        workdir: temporary folder of runs, caches and logs.
        root: the synthetic SYSU-MM01 dataset.
        still_root: a SYSU-MM01 layout of 2 training identities with 2 visible and
            2 infrared images each (:data:`STILL`).
        deadline: ``time.monotonic()`` at which the time budget ends.
    """

    device: torch.device
    plan: Plan
    workdir: Path
    root: Path
    still_root: Path
    deadline: float

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    def remaining(self) -> float:
        """Seconds left of the time budget (may be negative)."""
        return self.deadline - time.monotonic()


@dataclass
class CheckResult:
    """One check: passed, its numbers, and why it failed (``error``)."""

    name: str
    group: str
    passed: bool
    seconds: float
    figures: Figures = field(default_factory=dict)
    error: str | None = None
    required: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def require(figures: Figures, condition: bool, message: str) -> None:
    """Record ``message`` as a failure of the check that owns ``figures`` unless ``condition``."""
    if not condition:
        figures.setdefault("failures", []).append(message)


def run_check(name: str, group: str, fn: Callable[[], Figures], required: bool = True,
              announce: Callable[[str], None] = print) -> CheckResult:
    """Run one check; an exception or a recorded failure fails it, nothing stops the others."""
    announce(f"{name} ...")
    start = time.perf_counter()
    figures: Figures = {}
    error = None
    try:
        figures = fn()
    except Exception as exc:  # noqa: BLE001 - any failure is a result of the check
        lines = traceback.format_exception(exc)
        error = f"{type(exc).__name__}: {exc}".strip() + " | " + "".join(lines[-3:]).strip()
    finally:
        # Trainers hold loader workers and device memory in reference cycles.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    failures = figures.get("failures", [])
    if failures and error is None:
        error = "; ".join(failures)
    result = CheckResult(name, group, error is None, time.perf_counter() - start, figures,
                         error, required)
    verdict = "pass" if result.passed else ("FAIL" if required else "fail (informational)")
    announce(f"{name}: {verdict} ({result.seconds:.1f} s)" + ("" if result.passed
                                                              else f": {error[:300]}"))
    return result


def shipped_configs() -> list[Path]:
    """Every recipe of ``configs/`` (a method's dataset files and the demo; the methods'
    base files, ``configs/<method>/<method>.ini``, are in them), in name order."""
    return sorted(p for p in CONFIG_DIR.rglob("*.ini") if p.stem != p.parent.name)


def load(config: str | Path, overrides: Sequence[str] = ()) -> CfgNode:
    """``utils.config.load_config`` with random initial weights (no download).

    A config with MSCMNet's attention chain gets one attention head: the checks' small
    images give layer3 maps whose few token dimensions its 32 heads do not divide.
    """
    import data  # noqa: F401  (the packages add their config sections when imported)
    import layers  # noqa: F401
    import modeling  # noqa: F401
    import solver  # noqa: F401
    from utils.config import load_config

    base = ["MODEL.PRETRAIN_PATH", ""]
    if load_config(str(config)).get("MSCMNET", {}).get("ATTENTION"):
        base += ["MSCMNET.HEADS", "1"]
    return load_config(str(config), [*base, *overrides])


def small_batch(config: str | Path) -> int:
    """The smallest batch with 2 identities the config's SAMPLE_ID_INSTANCE allows."""
    return 2 * 2 * load(config).DATA.SAMPLE_ID_INSTANCE


def train_overrides(ctx: Context, run: str, size: tuple[int, int], batch: int, iters: int,
                    epochs: int | None, precision: str, workers: int,
                    root: Path | None = None) -> list[str]:
    """Keys of a short training run on the synthetic SYSU-MM01 (``root``, default
    ``ctx.root``) from the decoded cache, without evaluation.

    Args:
        epochs: TRAIN.MAX_EPOCHS, with no warmup and no steps; None keeps the
            config's schedule (for runs of a few iterations of its first epoch).
    """
    h, w = size
    schedule = [] if epochs is None else ["TRAIN.MAX_EPOCHS", str(epochs),
                                          "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.STEPS", ""]
    return ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(root or ctx.root),
            "DATA.SIZE_TRAIN", f"{h},{w}", "DATA.SIZE_TEST", f"{h},{w}",
            "DATA.TRAIN_BATCH_SIZE", str(batch), "DATA.NUM_WORKERS", str(workers),
            "DATA.CACHE", "yes", "DATA.CACHE_DIR", str(ctx.cache_dir),
            "DATA.VERIFY_IMAGES", "no", "MODEL.DEVICE", str(ctx.device),
            "TRAIN.OUTPUT_PATH", str(ctx.workdir / "runs" / run),
            "TRAIN.ITERS_PER_EPOCH", str(iters), *schedule,
            "TRAIN.EVAL_PERIOD", "0", "TRAIN.CHECKPOINT_PERIOD", "1", "TRAIN.LOG_PERIOD", "1000",
            *PRECISIONS[precision]]


def start_rate(config: str | Path) -> list[str]:
    """TRAIN.BASE_LR at the rate the config's schedule starts with (its warmup's first),
    for runs without warmup: from random weights the full rate can diverge in a few steps."""
    train = load(config).TRAIN
    if train.WARMUP_EPOCHS == 0:
        return []
    return ["TRAIN.BASE_LR", repr(train.BASE_LR * train.WARMUP_FACTOR)]


def still_overrides(ctx: Context, run: str, iters: int, epochs: int | None, precision: str,
                    workers: int | None = None) -> list[str]:
    """:func:`train_overrides` on the still dataset, all of it in every batch."""
    plan = ctx.plan
    return [*train_overrides(ctx, run, plan.train_size, STILL_BATCH, iters, epochs, precision,
                             plan.workers if workers is None else workers, ctx.still_root),
            *STILL]


def build_trainer(cfg: CfgNode, device: torch.device) -> Any:
    """An ``engine.trainer.Trainer`` of ``cfg`` on its dataset (one process)."""
    import data
    from engine.trainer import Trainer

    return Trainer(cfg, data.build_dataset(cfg, verbose=False), device)


def record_losses(trainer: Any) -> list[float]:
    """The list that receives the total loss of every later ``trainer.train_step``."""
    losses: list[float] = []
    step = trainer.train_step

    def recorded(batch: dict[str, torch.Tensor], epoch: int, it: int) -> dict[str, float]:
        terms = step(batch, epoch, it)
        losses.append(float(sum(terms.values())))
        return terms

    trainer.train_step = recorded  # the instance attribute shadows the method
    return losses


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (any devices)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on CUDA inside the block; the flags are restored."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe_name(config: Path) -> str:
    """A recipe's name: its path under ``configs/`` without ``.ini`` (``agw/sysumm``)."""
    return str(config.resolve().relative_to(CONFIG_DIR.resolve()).with_suffix(""))
