"""Export a trained network to ONNX or TorchScript and check the file against PyTorch.

The exported graph maps ``images`` (B, 3, H, W) float32, normalised with the
checkpoint's DATA.NORMALIZATION_MEAN / STD and resized to DATA.SIZE_TEST, and
``modality`` (B,) int64 (0 visible, 1 infrared) to ``features`` (B, D'): the
test feature of the checkpoint (TEST.FEAT, TEST.VIEWS, TEST.NORM_EACH,
TEST.PART_WEIGHTS; with TEST.FLIP the sum of the image's and its mirror's, as
``test.py`` adds them), exactly what ``test.py`` ranks with. TEST.NORM and TEST.DISTANCE apply when
features are compared and are recorded in the file's metadata.

:class:`ExportableNet` is the traceable form of ``VIReIDNet``'s eval pass:
the network routes each image to its modality's stream by indexing, which a
trace would freeze to the example batch's split; here every modality-specific
stream runs on the whole batch and ``torch.where`` keeps each image's own
stream, so any batch and any mix of modalities runs through one graph (at the
cost of running the modality-specific stages once per modality). A method's
front (``modeling.stages.FRONTS``) is exported through its ``single(img,
modality)`` path, its evaluation output for a batch of one modality.

The file is written next to ``out`` under a temporary name, run on a random
batch of both modalities of another size than the traced one (so a batch
axis frozen by the trace fails), compared with ``VIReIDNet`` itself (its own
routing, so a wrapper that drifted from the network fails too), and renamed
to ``out`` only when it matches: a failed export leaves an existing file as it was.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from engine.inference import extract_features
from modeling import VIReIDNet
from modeling.stages import StageContext, run_stages
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # max abs difference (fp32) between the exported file and PyTorch
EXPORT_REQUIREMENTS = "requirements-export.txt"
INPUT_NAMES = ("images", "modality")
OUTPUT_NAME = "features"
OPSET = 17


class ExportableNet(nn.Module):
    """``VIReIDNet``'s eval-mode feature in a traceable form.

    Args:
        model: the network; put in eval mode, weights shared (not copied).
        flip: add each image's horizontal mirror's feature to its own (TEST.FLIP).

    Raises:
        UserError: the network's front has no ``single`` path to export.
    """

    def __init__(self, model: VIReIDNet, flip: bool) -> None:
        super().__init__()
        front = getattr(model, "front", None)
        if front is not None and not callable(getattr(front, "single", None)):
            raise UserError(f"cannot export this network: its front "
                            f"({type(front).__name__}) has no single(img, modality) path")
        self.model = model
        self.flip = flip
        self.eval()

    def train(self, mode: bool = True) -> ExportableNet:
        """Always in eval mode: exporters restore the mode they found, and a training-mode
        BatchNorm would use the batch's statistics."""
        return super().train(False)

    def _feature(self, img: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = img
        infrared = (modality == INFRARED).view(-1, 1, 1, 1)
        front = getattr(m, "front", None)
        if front is not None:
            x = torch.where(infrared, front.single(img, INFRARED), front.single(img, VISIBLE))
        elif m.visible is not None:
            x = torch.where(infrared, m.infrared(img), m.visible(img))
        ctx = StageContext()
        if m.shared_from:
            ctx.taps[m._front_name] = x
        feat = m.pool(run_stages(m.shared, x, ctx))
        out = m._test_feature(feat, m.neck(feat))
        if m.visible is None and front is None:
            # One stream for both modalities: an identity on the modality keeps it an input
            # of the graph, so every exported file has the same two inputs.
            out = torch.where((modality >= 0).view(-1, 1), out, out)
        return out

    def forward(self, img: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """img (B, 3, H, W) float32 normalised; modality (B,) int64 -> (B, D') features."""
        out = self._feature(img, modality)
        if self.flip:
            out = out + self._feature(torch.flip(img, dims=[3]), modality)
        return out


class PlainAttention(nn.Module):
    """``nn.MultiheadAttention``'s eval-mode computation in plain operations.

    The module's own eval path is a fused kernel with no ONNX form, and its
    general path reshapes with the traced batch's size; this one uses the same
    weights (shared, not copied) and keeps the batch axis free. Masks, extra key
    and value biases, other key/value widths and zero-attention are not handled:
    a network using them is refused.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        unsupported = [name for name, used in (
            ("bias_k/bias_v", mha.bias_k is not None), ("add_zero_attn", mha.add_zero_attn),
            ("kdim/vdim", not mha._qkv_same_embed_dim)) if used]
        if unsupported:
            raise UserError(f"cannot export an nn.MultiheadAttention with "
                            f"{', '.join(unsupported)}")
        self.mha = mha

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, E) -> (B, heads, L, E / heads), the sizes read from ``t`` itself."""
        return t.view(t.shape[0], t.shape[1], self.mha.num_heads, -1).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = False, **masks: Any) -> tuple[torch.Tensor, None]:
        if need_weights or any(v is not None for v in masks.values()):
            raise UserError("cannot export an nn.MultiheadAttention called with attention "
                            "weights or masks")
        m = self.mha
        if not m.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        bias = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3
        heads = [self._split(torch.nn.functional.linear(t, w, b)) for t, w, b
                 in zip((query, key, value), m.in_proj_weight.chunk(3), bias)]
        out = torch.nn.functional.scaled_dot_product_attention(*heads)
        out = m.out_proj(out.transpose(1, 2).flatten(2))
        return (out if m.batch_first else out.transpose(0, 1)), None


def plain_attention(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.MultiheadAttention`` modules are :class:`PlainAttention`
    (``model`` itself is left as it is; the weights are copied)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr,
                    PlainAttention(module))
    return model


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and measured.

    Attributes:
        path: the exported file.
        format: ``onnx`` or ``torchscript``.
        max_abs_diff: max |exported - PyTorch| over the check batch.
        batch: the check batch's size (its modalities alternate).
        feature_dim: D', the feature width.
    """

    path: Path
    format: str
    max_abs_diff: float
    batch: int
    feature_dim: int


def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules.

    Raises:
        UserError: one of them is not installed.
    """
    mods = []
    for name in ("onnx", "onnxruntime"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            raise UserError(f"--format onnx needs the {name} package, which is not installed: "
                            f"pip install -r {EXPORT_REQUIREMENTS}") from None
    return mods[0], mods[1]


def metadata(cfg: CfgNode, feature_dim: int) -> dict[str, str]:
    """How to feed the exported model and compare its features (stored in the file)."""
    h, w = cfg.DATA.SIZE_TEST
    return {"inputs": "images (B, 3, H, W) float32 RGB, resized, (x / 255 - mean) / std; "
                      f"modality (B,) int64, {VISIBLE} visible / {INFRARED} infrared",
            "outputs": f"features (B, {feature_dim}) float32",
            "image_size": json.dumps([h, w]), "resize": cfg.DATA.RESIZE,
            "mean": json.dumps(list(cfg.DATA.NORMALIZATION_MEAN)),
            "std": json.dumps(list(cfg.DATA.NORMALIZATION_STD)),
            "flip_included": json.dumps(bool(cfg.TEST.FLIP)),
            "test_norm": json.dumps(bool(cfg.TEST.NORM)), "test_distance": cfg.TEST.DISTANCE}


def example_batch(cfg: CfgNode, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (batch, 3, H, W) float32 image batch at DATA.SIZE_TEST and (batch,) int64
    modalities alternating visible, infrared, ..."""
    h, w = cfg.DATA.SIZE_TEST
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, 3, h, w, generator=gen)
    modality = torch.tensor([(VISIBLE, INFRARED)[i % 2] for i in range(batch)],
                            dtype=torch.long)
    return img, modality


def _write_onnx(net: ExportableNet, example: tuple[torch.Tensor, torch.Tensor], path: Path,
                dynamic: bool, meta: dict[str, str]) -> None:
    onnx, _ = require_onnx()
    axes = {n: {0: "batch"} for n in (*INPUT_NAMES, OUTPUT_NAME)} if dynamic else None
    with warnings.catch_warnings():
        # The TorchScript-based exporter: it needs no package beyond onnx and handles the
        # traced graph; the newer exporter would add onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(path), dynamo=False, input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True)
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(net: ExportableNet, example: tuple[torch.Tensor, torch.Tensor],
                       path: Path, meta: dict[str, str]) -> None:
    with warnings.catch_warnings():
        # Tracer and deprecation notices: the check against PyTorch below is what counts.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(meta)})


def run_exported(path: str | os.PathLike, fmt: str, img: torch.Tensor, modality: torch.Tensor,
                 threads: int | None = None) -> np.ndarray:
    """Run an exported file on a batch on the CPU.

    Args:
        path: the ``.onnx`` or TorchScript file.
        fmt: ``onnx`` or ``torchscript``.
        img: (B, 3, H, W) float32; modality: (B,) int64.
        threads: intra-op threads (onnxruntime); None = its default.

    Returns:
        (B, D') float32 features.
    """
    if fmt == "onnx":
        session = onnx_session(path, threads)
        return session.run([OUTPUT_NAME], {"images": img.numpy(),
                                           "modality": modality.numpy()})[0]
    module = load_torchscript(path)
    with torch.inference_mode():
        return module(img, modality).numpy()


def load_torchscript(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """``torch.jit.load`` onto the CPU, without torch.jit's deprecation notice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` (``threads`` intra-op threads, one inter-op)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_model(cfg: CfgNode, model: VIReIDNet, out: str | os.PathLike, fmt: str,
                 batch: int | None = None, tolerance: float = TOLERANCE) -> ExportReport:
    """Export ``model``'s test feature to ``out`` and check it against PyTorch.

    Args:
        cfg: the checkpoint's config (DATA.SIZE_TEST, normalisation, TEST keys).
        model: the network with its weights (moved to the CPU, eval mode).
        out: the file to write.
        fmt: ``onnx`` or ``torchscript``.
        batch: None for a dynamic batch axis, else the fixed batch size.
        tolerance: the largest max abs difference accepted.

    Returns:
        The report (path, max abs difference, check batch size).

    Raises:
        UserError: unknown format, onnx missing, ``out`` not writable, or the exported
            file's features differ from PyTorch's by more than ``tolerance``.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    if batch is not None and batch < 1:
        raise UserError(f"--batch {batch}: expected dynamic or a batch size >= 1")
    out = Path(out)
    net = ExportableNet(plain_attention(model.cpu().float()), bool(cfg.TEST.FLIP))
    # Traced with 2 images, checked with 3 (another size, both modalities): a batch axis
    # the trace froze fails the check instead of passing unnoticed.
    example = example_batch(cfg, batch or 2, seed=0)
    check = example_batch(cfg, batch or 3, seed=1)
    with torch.inference_mode():
        feature_dim = int(net(*example).shape[1])
    meta = metadata(cfg, feature_dim)
    tmp = _temporary(out)
    try:
        with torch.no_grad():
            if fmt == "onnx":
                _write_onnx(net, example, tmp, batch is None, meta)
            else:
                _write_torchscript(net, example, tmp, meta)
        got = run_exported(tmp, fmt, *check)
        want = reference_features(model, *check, flip=bool(cfg.TEST.FLIP)).numpy()
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not diff <= tolerance:
            raise UserError(f"{out}: the exported {fmt} model differs from PyTorch by "
                            f"{diff:.3g} (max abs, batch of {len(check[0])}); expected at "
                            f"most {tolerance:g}; the file was not written")
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportReport(out, fmt, diff, len(check[0]), feature_dim)


def reference_features(model: VIReIDNet, img: torch.Tensor, modality: torch.Tensor,
                       flip: bool) -> torch.Tensor:
    """(B, D') features of the network itself, as the tester computes them
    (``engine.inference.extract_features``: its own routing by modality; with ``flip``
    the sum with the mirror's feature)."""
    batch = {"img": img, "modality": modality, "index": torch.arange(len(img))}
    return extract_features(model, [batch], len(img), img.device, flip=flip, amp=False)


def _temporary(out: Path) -> Path:
    """A new empty file next to ``out`` (same file system, so the final rename is atomic).

    Raises:
        UserError: the folder cannot be created or written.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    return Path(name)
