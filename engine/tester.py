"""What ``test.py`` does: load checkpoints, run the protocol, print tables, write JSON.

Configuration: the checkpoint carries the merged config it was trained with,
and that is the base. ``--config`` may replace it (e.g. another DATA.ROOT or
TEST settings) but its MODEL keys must equal the checkpoint's (DEVICE and
PRETRAIN_PATH excepted); command-line overrides follow the same rule. The
model is built with MODEL.PRETRAIN_PATH = '' (the weights come from the
checkpoint) and only the test images are read.

Cross-dataset testing: when the DATA keys (``--config`` or overrides such as
``DATA.DATASET_NAME llcm DATA.ROOT /data/LLCM``) name another dataset than
the checkpoint was trained on, the model is tested with that dataset's
protocol; only its embedding is used, and the results say ``trained_on``.
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
from data import DATASETS, VIReIDDataset
from engine.checkpoint import load_checkpoint, model_differences
from engine.cli import parse_trials
from engine.distributed import resolve_device
from engine.evaluate import format_tables, headline, run_evaluation, summarize
from engine.visual import write_pictures
from modeling import build_model
from utils.config import (
    config_from_ini_text,
    config_to_ini,
    get_default_config,
    load_config,
    merge_ini_text,
    merge_overrides,
    with_values,
)
from utils.errors import UserError
from utils.io import atomic_write_bytes, atomic_write_text


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
    for key, before, now in model_differences(saved, cfg):
        raise UserError(f"{source}: {key} = {now!r} but the checkpoint {path} was trained "
                        f"with {before!r}; the MODEL keys must match the checkpoint")
    cfg = with_values(cfg, MODEL__PRETRAIN_PATH="", MODEL__DEVICE=opts.device or cfg.MODEL.DEVICE,
                      TEST__GALLERY=opts.gallery or cfg.TEST.GALLERY)
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


def protocol_options(opts: TestOptions, dataset: type[VIReIDDataset]) -> dict[str, Any]:
    """The dataset's protocol options from ``--mode`` / ``--shots`` / ``--gallery``.

    Raises:
        UserError: an option the dataset's protocol does not have.
    """
    given = {"mode": opts.mode, "shots": opts.shots, "gallery": opts.gallery}
    for flag, value in given.items():
        if value is not None and flag not in dataset.options:
            having = [cls.label for cls in DATASETS.values() if flag in cls.options]
            raise UserError(f"--{flag} applies to {', '.join(having) or 'no dataset'} only; "
                            f"the config's dataset is {dataset.label}")
    out: dict[str, Any] = {}
    if opts.mode:
        out["modes"] = [opts.mode]
    if opts.shots:
        out["shots"] = [opts.shots]
    return out


def _features_npz(chunks: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **chunks)
    return buf.getvalue()


def _evaluate_checkpoint(path: str, ckpt: dict[str, Any], opts: TestOptions,
                         split_trial: int | None, gallery_trials: list[int] | None,
                         features: dict[str, Any] | None, prefix: str
                         ) -> tuple[CfgNode, dict[str, Any]]:
    cfg = resolve_config(ckpt, path, opts)
    saved = config_from_ini_text(str(ckpt["config"]), where=f"{path} (saved config)")
    name = cfg.DATA.DATASET_NAME
    if split_trial is not None:
        if saved.DATA.DATASET_NAME == name and saved.DATA.TRIAL != split_trial:
            raise UserError(f"{path} was trained on {DATASETS[name].label} trial "
                            f"{saved.DATA.TRIAL}; testing it "
                            f"on trial {split_trial} would test on its training ids")
        cfg = with_values(cfg, DATA__TRIAL=split_trial)
    device = resolve_device(cfg)
    model = load_model(cfg, ckpt, path).to(device)
    if device.type == "cuda" and cfg.TRAIN.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    dataset = data.build_dataset(cfg, verbose=True, need_train=False)
    ev = run_evaluation(cfg, model, dataset, trials=gallery_trials, device=device,
                        options=protocol_options(opts, type(dataset)))
    if features is not None:
        for k, recs in ev.sets.items():
            features[f"{prefix}{k}_feat"] = ev.feats[k].cpu().numpy()
            features[f"{prefix}{k}_pid"] = np.array([r.pid for r in recs])
            features[f"{prefix}{k}_cam"] = np.array([r.cam for r in recs])
            features[f"{prefix}{k}_path"] = np.array([r.path for r in recs])
    results = ev.results
    if saved.DATA.DATASET_NAME != name:
        results["trained_on"] = saved.DATA.DATASET_NAME
        print(f"cross-dataset test: trained on {saved.DATA.DATASET_NAME}, tested on {name}")
    if opts.visualize:
        folder = Path(opts.visualize) / prefix.rstrip("_") if prefix else Path(opts.visualize)
        for written in write_pictures(cfg, ev, folder):
            print(f"wrote {written}")
    return cfg, results


def merge_split_trials(per_trial: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict over several train/test splits (one model each): the trials of
    every setting side by side, mean and std over them."""
    merged = json.loads(json.dumps(per_trial[0]))
    key = DATASETS[merged["dataset"]].split_key
    for name, entry in merged["settings"].items():
        entry["trials"] = [r["settings"][name]["trials"][0] for r in per_trial]
        summarize(entry)
    merged["protocol"][key] = [r["protocol"][key] for r in per_trial]
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
        # The syntax is checked now; the range once the dataset is known.
        first = (parse_trials(opts.trial, None) or [1])[0]
        first_path = opts.model_path.replace("{trial}", str(first))
    # The tested dataset decides what --trial means; read it from the first checkpoint's
    # config with the command line applied.
    first_ckpt = load_checkpoint(first_path)
    first_cfg = resolve_config(first_ckpt, first_path, opts)
    dataset = DATASETS[first_cfg.DATA.DATASET_NAME]
    protocol_options(opts, dataset)
    features: dict[str, Any] | None = {} if opts.save_features else None
    if dataset.split_trials:
        trials = parse_trials(opts.trial, dataset.split_trials) or [first_cfg.DATA.TRIAL]
        trained_on = config_from_ini_text(str(first_ckpt["config"]),
                                          where=f"{first_path} (saved config)").DATA.DATASET_NAME
        # A model of another dataset is one model for every split; one of this dataset's
        # was trained on one split and has a sibling per split.
        if len(trials) > 1 and not templated and trained_on == first_cfg.DATA.DATASET_NAME:
            raise UserError(f"--trial {opts.trial} evaluates one model per {dataset.label} "
                            "split: put {trial} in --model-path (e.g. "
                            "'out/trial_{trial}/best.pth')")
        paths = [opts.model_path.replace("{trial}", str(t)) for t in trials]
        runs = []
        for t, path in zip(trials, paths):
            prefix = f"trial{t}_" if len(trials) > 1 else ""
            ckpt = first_ckpt if path == first_path else load_checkpoint(path)
            runs.append(_evaluate_checkpoint(path, ckpt, opts, t, None, features, prefix))
        cfg = runs[0][0]
        results = (merge_split_trials([r for _, r in runs]) if len(runs) > 1
                   else runs[0][1])
        checkpoint: Any = paths if len(paths) > 1 else paths[0]
    else:
        if templated:
            raise UserError(f"--model_path {opts.model_path}: {{trial}} names the per-trial "
                            f"models of a dataset in fixed splits, but {dataset.label} has one "
                            "split (its --trial is a gallery trial)")
        cfg, results = _evaluate_checkpoint(first_path, first_ckpt, opts, None,
                                            parse_trials(opts.trial, None), features, "")
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
