"""What a recipe computes, in numbers that can be kept and compared: the first training
losses and the test features on small synthetic data with a fixed seed.

``recipe_values(config, roots, out)`` builds the recipe's own network (random weights,
64x32 images) on the synthetic dataset of its kind, runs three training steps and
extracts eval-mode features of a few test images of each modality. Features are kept
as their row norms and a fixed random projection (seed 0) to 8 dimensions, plus the
SHA-256 of their bytes, so that a recorded file stays small and a comparison can be
exact on one machine and within a float tolerance on another.

``python -m tests.recipe_values OUT.json`` records every recipe of ``RECIPES``.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# The recipes whose numbers are kept: name -> dataset kind.
RECIPES = {
    "res50_regdb_all": "regdb", "res50_sysumm_all": "sysumm",
    "agw_regdb": "regdb", "agw_sysumm": "sysumm", "agw_llcm": "llcm",
    "caj_regdb": "regdb", "caj_sysumm": "sysumm", "caj_llcm": "llcm",
    "deen_regdb": "regdb", "deen_sysumm": "sysumm", "deen_llcm": "llcm",
    "demo_synthetic": "regdb",
}
STEPS = 3
IMAGES_PER_SET = 6


def make_roots(folder: Path) -> dict[str, Path]:
    """Small synthetic RegDB (40 ids), SYSU-MM01 (12 + 6 training ids) and LLCM (12)."""
    from tools.make_synthetic_data import make_llcm, make_regdb, make_sysu

    return {"regdb": make_regdb(folder / "RegDB", num_ids=40, images_per_id=4, seed=0),
            "sysumm": make_sysu(folder / "SYSU-MM01", num_train=12, num_val=6, num_test=4,
                                images_per_cam=(2, 3), seed=0),
            "llcm": make_llcm(folder / "LLCM", num_train=12, num_test=4, seed=0)}


def small_overrides(root: Path, out: Path) -> list[str]:
    """Keys every recipe takes to run small, on the CPU, from random weights."""
    return ["DATA.ROOT", str(root), "DATA.SIZE_TRAIN", "64,32", "DATA.SIZE_TEST", "64,32",
            "DATA.NUM_WORKERS", "0", "DATA.VERIFY_IMAGES", "no", "DATA.CACHE", "no",
            "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu", "TRAIN.SEED", "0",
            "TRAIN.ITERS_PER_EPOCH", str(STEPS), "TRAIN.OUTPUT_PATH", str(out)]


def _projection(dim: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(dim, 8, generator=gen, dtype=torch.float64)


def feature_summary(feats: torch.Tensor) -> dict[str, Any]:
    """Row norms, an 8-d projection and the SHA-256 of float32 features (N, D)."""
    f = feats.detach().cpu().float().contiguous()
    return {"shape": list(f.shape), "norms": f.double().norm(dim=1).tolist(),
            "projection": (f.double() @ _projection(f.shape[1])).tolist(),
            "sha256": hashlib.sha256(f.numpy().tobytes()).hexdigest()}


def recipe_values(config: Path, root: Path, out: Path, extra: list[str] | None = None
                  ) -> dict[str, Any]:
    """The first STEPS losses and the test features of ``config`` on ``root``."""
    import data
    from engine.inference import extract_record_features
    from engine.trainer import Trainer
    from utils.config import load_config

    cfg = load_config(config, small_overrides(root, out) + list(extra or []))
    torch.manual_seed(0)
    dataset = data.build_dataset(cfg, verbose=False)
    trainer = Trainer(cfg, dataset, torch.device("cpu"))
    trainer.model.train()
    trainer.criterion.train()
    trainer.sampler.set_epoch(1)
    losses = [trainer.train_step(batch, 1, it) for it, batch in
              enumerate(trainer.loader, start=1)]
    model = trainer.model.eval()
    features = {}
    for name, records in sorted(dataset.test_sets.items()):
        feats = extract_record_features(cfg, model, records[:IMAGES_PER_SET],
                                        torch.device("cpu"), name)
        features[name] = feature_summary(feats)
    return {"losses": losses, "features": features, "flip": bool(cfg.TEST.FLIP)}


def record(path: Path) -> None:
    """Record every recipe's values and merged configuration into ``path`` (JSON)."""
    from utils.config import config_to_ini, load_config

    torch.set_num_threads(1)
    out: dict[str, Any] = {"torch": torch.__version__, "recipes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        roots = make_roots(Path(tmp) / "data")
        for name, kind in RECIPES.items():
            config = REPO / "configs" / f"{name}.ini"
            values = recipe_values(config, roots[kind], Path(tmp) / "runs" / name)
            values["config"] = config_to_ini(load_config(config))
            out["recipes"][name] = values
            print(name, [round(sum(v.values()), 6) for v in values["losses"]], flush=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    np.set_printoptions(precision=6)
    record(Path(sys.argv[1]))
