"""What ``test.py`` does: load checkpoints, run the protocol, print tables, write JSON.

Configuration: the checkpoint carries the merged config it was trained with,
and that is the base. ``--config`` may replace it (e.g. another DATA.ROOT or
TEST settings) but its MODEL keys must equal the checkpoint's (DEVICE and
PRETRAIN_PATH excepted); command-line overrides follow the same rule. The
model is built with MODEL.PRETRAIN_PATH = '' (the weights come from the
checkpoint) and only the test images are read.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode

import data
from engine.checkpoint import config_differences, load_checkpoint
from engine.distributed import resolve_device
from engine.evaluate import (
    assemble,
    build_settings,
    evaluate_features,
    evaluation_sets,
    extract_sets,
    format_tables,
    headline,
    summarize,
)
from engine.visual import write_pictures
from modeling import build_model
from utils.config import (
    config_from_ini_text,
    config_to_ini,
    get_default_config,
    load_config,
    merge_ini_text,
    merge_overrides,
)
from utils.errors import UserError
from utils.io import atomic_write_bytes, atomic_write_text

# MODEL keys that do not change the network.
_FREE_MODEL_KEYS = {"MODEL.DEVICE", "MODEL.PRETRAIN_PATH"}
REGDB_TRIALS = tuple(range(1, 11))


@dataclass
class TestOptions:
    """The command line of ``test.py`` (see its ``--help``)."""

    model_path: str
    config: str | None = None
    trial: str | None = None
    mode: str | None = None
    shots: int | None = None
    gallery: str | None = None
    output: str | None = None
    save_features: str | None = None
    device: str | None = None
    visualize: str | None = None
    overrides: list[str] = field(default_factory=list)


def _with_overrides(base_text: str, where: str, overrides: list[str]) -> CfgNode:
    cfg = get_default_config()
    merge_ini_text(cfg, base_text, where)
    merge_overrides(cfg, overrides)
    # Round-trip through the loader so choices and ranges are checked.
    return config_from_ini_text(config_to_ini(cfg), where="command line")


def resolve_config(ckpt: dict[str, Any], path: str, opts: TestOptions) -> CfgNode:
    """The config to test with: the checkpoint's (or ``--config``) plus overrides.

    Raises:
        UserError: a MODEL key differs from the checkpoint's.
    """
    saved = config_from_ini_text(str(ckpt["config"]), where=f"{path} (saved config)")
    if opts.config:
        cfg = load_config(opts.config, opts.overrides)
        source = opts.config
    else:
        cfg = _with_overrides(config_to_ini(saved), f"{path} (saved config)", opts.overrides)
        source = "command line"
    for key, before, now in config_differences(saved, cfg):
        if key.startswith("MODEL.") and key not in _FREE_MODEL_KEYS:
            raise UserError(f"{source}: {key} = {now!r} but the checkpoint {path} was trained "
                            f"with {before!r}; the MODEL keys must match the checkpoint")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.PRETRAIN_PATH = ""
    if opts.device:
        cfg.MODEL.DEVICE = opts.device
    if opts.gallery:
        cfg.TEST.GALLERY = opts.gallery
    cfg.freeze()
    return cfg


def load_model(cfg: CfgNode, ckpt: dict[str, Any], path: str) -> torch.nn.Module:
    """Build the config's model and load the checkpoint's weights into it.

    Raises:
        UserError: the weights do not fit (backbone, two-stream layout, classes).
    """
    num_classes = int(ckpt["num_classes"])
    model = build_model(cfg, num_classes)
    state = ckpt["model"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: 'model' is not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + \
               ([f"shape {'; '.join(shapes[:3])}"] if shapes else [])
    if problems:
        m = cfg.MODEL
        raise UserError(
            f"{path} does not fit the model of the config (MODEL.NAME = {m.NAME}, "
            f"MODEL.SHARED_FROM = {m.SHARED_FROM}, {num_classes} classes): "
            + "; ".join(problems))
    model.load_state_dict(state)
    return model


def _parse_trial(text: str | None, dataset: str) -> list[int] | None:
    if text is None:
        return None
    if text.strip().lower() == "all":
        return list(REGDB_TRIALS) if dataset == "regdb" else []
    if not text.strip().isdigit() or int(text) < 1 or (dataset == "regdb" and int(text) > 10):
        what = "a RegDB trial 1..10" if dataset == "regdb" else "a gallery trial number >= 1"
        raise UserError(f"--trial {text}: expected {what} or all")
    return [int(text)]


def _check_protocol_options(opts: TestOptions, dataset: str) -> None:
    if dataset != "sysumm":
        for flag, value in (("--mode", opts.mode), ("--shots", opts.shots),
                            ("--gallery", opts.gallery)):
            if value is not None:
                raise UserError(f"{flag} applies to SYSU-MM01 only; the config's dataset "
                                f"is {dataset}")


def _features_npz(chunks: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **chunks)
    return buf.getvalue()


def _evaluate_checkpoint(path: str, ckpt: dict[str, Any], opts: TestOptions,
                         regdb_trial: int | None, gallery_trials: list[int] | None,
                         features: dict[str, Any] | None, prefix: str
                         ) -> tuple[CfgNode, dict[str, Any]]:
    cfg = resolve_config(ckpt, path, opts)
    name = cfg.DATA.DATASET_NAME
    _check_protocol_options(opts, name)
    if regdb_trial is not None and name == "regdb":
        saved = config_from_ini_text(str(ckpt["config"]), where=f"{path} (saved config)")
        if saved.DATA.DATASET_NAME == "regdb" and saved.DATA.TRIAL != regdb_trial:
            raise UserError(f"{path} was trained on RegDB trial {saved.DATA.TRIAL}; testing it "
                            f"on trial {regdb_trial} would test on its training ids")
        cfg.defrost()
        cfg.DATA.TRIAL = regdb_trial
        cfg.freeze()
    device = resolve_device(cfg)
    model = load_model(cfg, ckpt, path).to(device)
    if device.type == "cuda" and cfg.TRAIN.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    dataset = data.build_dataset(cfg, verbose=True, need_train=False)
    sets = evaluation_sets(dataset)
    settings, info = build_settings(
        cfg, dataset, sets, trials=gallery_trials or None,
        modes=[opts.mode] if opts.mode else None, shots=[opts.shots] if opts.shots else None)
    feats = extract_sets(cfg, model, sets, device)
    if features is not None:
        for k, recs in sets.items():
            features[f"{prefix}{k}_feat"] = feats[k].cpu().numpy()
            features[f"{prefix}{k}_pid"] = np.array([r.pid for r in recs])
            features[f"{prefix}{k}_cam"] = np.array([r.cam for r in recs])
            features[f"{prefix}{k}_path"] = np.array([r.path for r in recs])
    results = assemble(cfg, name, "test", info, evaluate_features(cfg, settings, feats, sets))
    if opts.visualize:
        folder = Path(opts.visualize) / prefix.rstrip("_") if prefix else Path(opts.visualize)
        for written in write_pictures(cfg, results, settings, feats, sets, folder):
            print(f"wrote {written}")
    return cfg, results


def merge_regdb_trials(per_trial: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict over several RegDB trials (one model each): the trials of every
    setting side by side, mean and std over them."""
    merged = json.loads(json.dumps(per_trial[0]))
    for name, entry in merged["settings"].items():
        entry["trials"] = [r["settings"][name]["trials"][0] for r in per_trial]
        summarize(entry)
    merged["protocol"]["regdb_trial"] = [r["protocol"]["regdb_trial"] for r in per_trial]
    merged["headline"] = headline(merged)
    return merged


def run_test(opts: TestOptions) -> dict[str, Any]:
    """Evaluate the checkpoint(s), print one table per setting, write the outputs.

    Returns:
        The results dict (as written to ``--output``).
    """
    templated = "{trial}" in opts.model_path
    first_path = opts.model_path
    if templated:
        if opts.trial is None:
            raise UserError(f"--model_path {opts.model_path} has {{trial}}: give --trial N "
                            "or --trial all")
        first_trial = "1" if opts.trial.strip().lower() == "all" else opts.trial.strip()
        first_path = opts.model_path.replace("{trial}", first_trial)
    # The dataset decides what --trial means; read it from the first checkpoint's config.
    first_ckpt = load_checkpoint(first_path)
    first_cfg = resolve_config(first_ckpt, first_path, opts)
    dataset = first_cfg.DATA.DATASET_NAME
    trials = _parse_trial(opts.trial, dataset)
    features: dict[str, Any] | None = {} if opts.save_features else None
    if dataset == "regdb":
        regdb_trials = trials or [first_cfg.DATA.TRIAL]
        if len(regdb_trials) > 1 and not templated:
            raise UserError("--trial all evaluates one model per RegDB trial: put {trial} in "
                            "--model_path (e.g. 'out/trial_{trial}/best.pth')")
        paths = [opts.model_path.replace("{trial}", str(t)) for t in regdb_trials]
        runs = []
        for t, path in zip(regdb_trials, paths):
            prefix = f"trial{t}_" if len(regdb_trials) > 1 else ""
            ckpt = first_ckpt if path == first_path else load_checkpoint(path)
            runs.append(_evaluate_checkpoint(path, ckpt, opts, t, None, features, prefix))
        cfg = runs[0][0]
        results = (merge_regdb_trials([r for _, r in runs]) if len(runs) > 1
                   else runs[0][1])
        checkpoint: Any = paths if len(paths) > 1 else paths[0]
    else:
        if templated:
            raise UserError(f"--model_path {opts.model_path}: {{trial}} names RegDB's per-trial "
                            f"models, but the checkpoint's dataset is {dataset}")
        cfg, results = _evaluate_checkpoint(first_path, first_ckpt, opts, None, trials,
                                            features, "")
        checkpoint = first_path
    results = {"checkpoint": checkpoint, **results, "config": config_to_ini(cfg)}
    print(format_tables(results))
    if opts.output:
        atomic_write_text(opts.output, json.dumps(results, indent=2) + "\n")
        print(f"results written to {opts.output}")
    if features is not None:
        atomic_write_bytes(opts.save_features, _features_npz(features))
        print(f"features written to {opts.save_features}")
    return results

