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
from data.base import ProtocolOption
from engine.checkpoint import check_same_network, load_checkpoint, saved_config
from engine.cli import parse_trials
from engine.distributed import resolve_device
from engine.evaluate import format_tables, headline, run_evaluation, summarize
from engine.record import checkpoint_precision, log_record, run_record
from engine.targets import format_target, target_record
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
from utils.state import load_state


@dataclass
class TestOptions:
    """The command line of ``test.py`` (see its ``--help``)."""

    model_path: str
    config: str | None = None
    trial: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
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


def resolve_config(saved: CfgNode, path: str, opts: TestOptions) -> CfgNode:
    """The config to test with: the checkpoint's saved one (or ``--config``) plus the
    overrides and the dataset options of the command line.

    Raises:
        UserError: a key that defines the network differs from the checkpoint's.
    """
    if opts.config:
        cfg = load_config(opts.config, opts.overrides)
        source = opts.config
    else:
        cfg = _with_overrides(config_to_ini(saved), f"{path} (saved config)", opts.overrides)
        source = "command line"
    check_same_network(saved, cfg, path, source)
    values = {key.replace(".", "__"): value for key, value in _option_keys(opts).items()}
    return with_values(cfg, MODEL__PRETRAIN_PATH="",
                       MODEL__DEVICE=opts.device or cfg.MODEL.DEVICE, **values)


def load_model(cfg: CfgNode, ckpt: dict[str, Any], path: str) -> torch.nn.Module:
    """Build the config's model and load the checkpoint's weights into it.

    Raises:
        UserError: the weights do not fit (backbone, two-stream layout, classes).
    """
    num_classes = int(ckpt["num_classes"])
    model = build_model(cfg, num_classes)
    load_state(model, ckpt["model"], f"{path} does not fit the model of its config "
               f"(MODEL.NAME = {cfg.MODEL.NAME}, {num_classes} classes)")
    return model


def _given(opts: TestOptions) -> dict[str, tuple[ProtocolOption, Any]]:
    """The dataset options given on the command line: name -> (option, value)."""
    known = {o.name: o for cls in DATASETS.values() for o in cls.options}
    return {name: (known[name], value) for name, value in opts.protocol.items()
            if value is not None}


def _option_keys(opts: TestOptions) -> dict[str, Any]:
    """Config keys set by dataset options (``--gallery`` -> SYSUMM.GALLERY)."""
    return {o.config_key: v for o, v in _given(opts).values() if o.config_key}


def protocol_options(opts: TestOptions, dataset: type[VIReIDDataset]) -> dict[str, Any]:
    """The ``settings`` keywords of the dataset options given (``--mode indoor`` ->
    ``modes=['indoor']``).

    Raises:
        UserError: an option the dataset does not offer.
    """
    out: dict[str, Any] = {}
    for name, (option, value) in _given(opts).items():
        if option not in dataset.options:
            having = [cls.label for cls in DATASETS.values()
                      if any(o.name == name for o in cls.options)]
            raise UserError(f"--{name} applies to {', '.join(having)} only; the config's "
                            f"dataset is {dataset.label}")
        if option.settings_arg:
            out[option.settings_arg] = [value]
    return out


def _features_npz(chunks: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **chunks)
    return buf.getvalue()


def _evaluate_checkpoint(path: str, ckpt: dict[str, Any], opts: TestOptions,
                         split_trial: int | None, gallery_trials: list[int] | None,
                         features: dict[str, Any] | None, prefix: str
                         ) -> tuple[CfgNode, dict[str, Any]]:
    saved = saved_config(ckpt, path)
    cfg = resolve_config(saved, path, opts)
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
    record = run_record(cfg, device, dataset, checkpoint_precision(ckpt, saved))
    log_record(record, print, lambda line: print(f"warning: {line}"))
    results.update(record)
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
    first_cfg = resolve_config(saved_config(first_ckpt, first_path), first_path, opts)
    dataset = DATASETS[first_cfg.DATA.DATASET_NAME]
    protocol_options(opts, dataset)
    features: dict[str, Any] | None = {} if opts.save_features else None
    if dataset.split_trials:
        trials = parse_trials(opts.trial, dataset.split_trials) or [first_cfg.DATA.TRIAL]
        trained_on = saved_config(first_ckpt, first_path).DATA.DATASET_NAME
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
        if len(runs) > 1:  # each split's own counts
            results["dataset_fingerprint"] = [r["dataset_fingerprint"] for _, r in runs]
        checkpoint: Any = paths if len(paths) > 1 else paths[0]
    else:
        if templated:
            raise UserError(f"--model_path {opts.model_path}: {{trial}} names the per-trial "
                            f"models of a dataset in fixed splits, but {dataset.label} has one "
                            "split (its --trial is a gallery trial)")
        cfg, results = _evaluate_checkpoint(first_path, first_ckpt, opts, None,
                                            parse_trials(opts.trial, None), features, "")
        checkpoint = first_path
    target = target_record(cfg, results, results.get("trained_on"))
    results = {"checkpoint": checkpoint, **results, **({"target": target} if target else {}),
               "config": config_to_ini(cfg)}
    print(format_tables(results))
    if target:
        print(format_target(target))
    if opts.output:
        atomic_write_text(opts.output, json.dumps(results, indent=2) + "\n")
        print(f"results written to {opts.output}")
    if features is not None:
        atomic_write_bytes(opts.save_features, _features_npz(features))
        print(f"features written to {opts.save_features}")
    return results
