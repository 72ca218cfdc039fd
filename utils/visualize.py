"""Pictures: ranked-results sheets, CMC curves and training curves (PNG)."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.io import atomic_write_bytes

GREEN = (40, 170, 60)
RED = (210, 40, 40)
BLUE = (40, 90, 200)
GREY = (150, 150, 150)


def _save_png(image: Image.Image, path: str | os.PathLike) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure to ``path`` as a PNG at 100 dpi, atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def ranked_sheet(
    query_paths: Sequence[str],
    query_pids: Sequence[int] | None,
    gallery_paths: Sequence[str],
    gallery_pids: Sequence[int] | None,
    distmat: np.ndarray,
    out_path: str | os.PathLike,
    topk: int = 10,
    cell: tuple[int, int] = (128, 64),
) -> tuple[int, int]:
    """Draw each query and its ``topk`` nearest gallery images, framed by correctness.

    Args:
        query_paths, query_pids: the queries to draw (one row each).
        gallery_paths, gallery_pids: the gallery. Without identities (both pids None)
            the gallery images are framed grey and the query is labelled ``query``.
        distmat: (num_queries, num_gallery) distances, smaller is closer.
        out_path: PNG file to write.
        topk: gallery images per row.
        cell: (height, width) of each thumbnail.

    Returns:
        The (width, height) of the written image.
    """
    distmat = np.asarray(distmat)
    topk = min(topk, distmat.shape[1])
    h, w = cell
    pad, label_h, border = 6, 14, 3
    cols = topk + 1
    width = pad + cols * (w + pad) + pad
    height = pad + len(query_paths) * (h + label_h + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()

    def paste(path: str, x: int, y: int, colour: tuple[int, int, int], text: str) -> None:
        thumb = Image.open(path).convert("RGB").resize((w - 2 * border, h - 2 * border))
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
        sheet.paste(thumb, (x + border, y + border))
        draw.text((x + 1, y + h + 1), text, fill=(0, 0, 0), font=font)

    known = query_pids is not None and gallery_pids is not None
    for row, qpath in enumerate(query_paths):
        qpid = query_pids[row] if known else None
        y = pad + row * (h + label_h + pad)
        paste(qpath, pad, y, BLUE, f"q id {qpid}" if known else "query")
        order = np.argsort(distmat[row], kind="stable")
        order = order[np.isfinite(distmat[row][order])][:topk]  # drop entries a rule removed
        for col, g in enumerate(order, start=1):
            colour = GREY if not known else GREEN if gallery_pids[g] == qpid else RED
            paste(gallery_paths[g], pad + col * (w + pad), y, colour, f"{distmat[row, g]:.3f}")
    _save_png(sheet, out_path)
    return sheet.size


def cmc_curves(curves: Mapping[str, Sequence[float]], out_path: str | os.PathLike,
               title: str = "CMC") -> None:
    """Plot one CMC curve (rank 1..len) per setting; values are fractions in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, cmc in curves.items():
        cmc = np.asarray(cmc, dtype=float) * 100
        ax.plot(np.arange(1, len(cmc) + 1), cmc, marker="o", markersize=3,
                label=f"{name} (R1 {cmc[0]:.1f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path)
    plt.close(fig)


def _read_metrics(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def _flatten(record: Mapping, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _final_test(run_dir: Path, records: list[dict]) -> tuple[int, dict[str, float]] | None:
    """The selected checkpoint's figures from ``results.json`` as (epoch, {series: value}).

    They continue the periodic evaluation lines when both are on the same split,
    else they form their own ``final <split>/...`` series; None without a readable file.
    """
    try:
        res = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        epoch = int(res["selection"]["epoch"])
        settings = {name: s["mean"] for name, s in res["settings"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    splits = [r["eval"].get("split") for r in records if isinstance(r.get("eval"), Mapping)]
    prefix = "eval" if splits and splits[-1] == res.get("split") else \
        f"final {res.get('split', 'test')}"
    return epoch, {f"{prefix}/{name}/{metric}": float(value)
                   for name, mean in settings.items() for metric, value in mean.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}


def curve_series(run_dir: str | os.PathLike) -> dict[str, dict[str, tuple[list, list]]]:
    """The series :func:`training_curves` draws: ``{panel: {name: (epochs, values)}}``.

    Panels: ``loss terms``, ``learning rate`` and ``evaluation (%)`` (periodic
    evaluation, ended by the final test of ``results.json`` at its selected epoch).
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        from utils.errors import UserError

        raise UserError(f"{metrics_path}: not found; is {run_dir} a training run folder?")
    records = _read_metrics(metrics_path)
    rows = [(r.get("epoch", i + 1), _flatten(r)) for i, r in enumerate(records)]
    final = _final_test(run_dir, records)
    if final is not None:
        epoch, figures = final
        same = [row for e, row in rows if e == epoch]
        if not same:
            rows = sorted([*rows, (epoch, figures)], key=lambda item: item[0])
        elif not any(k in same[-1] for k in figures):  # else evaluated there already
            same[-1].update(figures)
    names = sorted({k for _, r in rows for k in r})
    panels = {
        "loss terms": [n for n in names if n.split("/")[-1].startswith("loss")],
        "learning rate": [n for n in names if n.split("/")[-1] == "lr"],
        "evaluation (%)": [n for n in names
                           if any(t in n.split("/")[-1] for t in ("R1", "mAP", "mINP"))],
    }
    return {title: {k: ([e for e, r in rows if k in r], [r[k] for _, r in rows if k in r])
                    for k in keys} for title, keys in panels.items() if keys}


def training_curves(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Plot loss terms, learning rate and evaluation figures of ``run_dir/metrics.jsonl``.

    The evaluation panel ends with the final test of ``results.json`` when the
    run has one (see :func:`curve_series`).

    Returns:
        The written PNG path (``run_dir/training_curves.png`` by default).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    panels = list(curve_series(run_dir).items())
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4))
    axes = np.atleast_1d(axes)
    for ax, (title, series) in zip(axes, panels):
        for key, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_path) if out_path else run_dir / "training_curves.png"
    save_figure(fig, out)
    plt.close(fig)
    return out

