"""Turn a released AGW / CAJ / DEEN / MSCMNet checkpoint into one of this project's
checkpoints.

The released files (``torch.save`` of ``{'net': state_dict, 'mAP', 'mINP', 'cmc',
'epoch'}``) hold numpy scalars and arrays next to the weights; they are read
with ``weights_only=True`` and an allow-list of exactly those numpy classes, so a
file holding anything else (a whole pickled model) is refused, never executed.
Bare state dicts and ``module.``-prefixed ones (DataParallel) are accepted too.

The import is strict: the config must build the published network (MODEL keys
checked), every tensor of ours is filled from the file (the key table of
``modeling.published``) with exactly its shape, and every tensor of the file is
either used or one of the groups the published code builds but never runs.
The config's TEST keys are set to the authors' test-time feature, so that
``test.py`` computes the figures they reported.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode

from modeling import build_model
from modeling.published import OWN_ONLY, count_by_group, key_table
from utils.config import (
    config_to_ini,
    format_value,
    load_config,
    network_differences,
    with_values,
)
from utils.errors import UserError
from utils.io import atomic_torch_save, load_tensor_file
from utils.state import short_list

SOURCES = ("agw", "caj", "deen", "mscmnet")
LABELS = {"agw": "AGW", "caj": "CAJ", "deen": "DEEN", "mscmnet": "MSCMNet"}
# The published networks of each family and the sources that wrote them.
FAMILY_SOURCES = {"agw": ("agw", "caj"), "deen": ("deen",), "mscmnet": ("mscmnet",)}
RESAVE = "torch.save({'net': model.state_dict()}, path)"

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The recipe file that builds each published network (AGW's and CAJ's are one; DEEN's
# RegDB network stops after layer3 and has no MFA block after it); its keys that define
# the network are the ones a config must have to import that network.
NETWORK_RECIPES = {"agw": "agw/agw.ini", "deen": "deen/deen.ini", "deen-regdb": "deen/regdb.ini",
                   "mscmnet": "mscmnet/mscmnet.ini"}
NETWORK_LABELS = {"agw": "AGW/CAJ's network (configs/agw/, configs/caj/)",
                  "deen": "DEEN's SYSU-MM01/LLCM network (configs/deen/deen.ini, sysumm.ini, "
                          "llcm.ini)",
                  "deen-regdb": "DEEN's RegDB network (configs/deen/regdb.ini)",
                  "mscmnet": "MSCMNet's network (configs/mscmnet/)"}
# The recipe whose TEST keys are each source's test-time feature, and which of them.
TEST_RECIPES = {"agw": "agw/agw.ini", "caj": "caj/caj.ini", "deen": "deen/deen.ini",
                "mscmnet": "mscmnet/mscmnet.ini"}
TEST_FEATURE_KEYS = ("FEAT", "VIEWS", "PART_WEIGHTS", "NORM_EACH", "NORM", "DISTANCE", "FLIP",
                     "RERANK")


@functools.cache
def recipe(relative: str) -> CfgNode:
    """The merged config of ``configs/<relative>``."""
    return load_config(CONFIGS / relative)


def published_test_keys(source: str) -> dict[str, Any]:
    """The authors' test-time feature of ``source``: TEST keys of its recipe."""
    test = recipe(TEST_RECIPES[source]).TEST
    return {f"TEST.{k}": tuple(test[k]) if isinstance(test[k], list | tuple) else test[k]
            for k in TEST_FEATURE_KEYS}


TEST_FEATURES = {
    "agw": "the BN feature, L2-normalised, no flip (AGW's test.py)",
    "caj": "the BN feature of the image and its mirror, each L2-normalised, added and "
           "normalised again (CAJ's testa.py)",
    "deen": "pooled and BN vectors of the 3 embeddings, each L2-normalised and added to its "
            "mirror's, ranked by the sum of inner products (DEEN's test.py)",
    "mscmnet": "the BN feature, L2-normalised, no flip (MSCMNet's test.py; its README's "
               "figure)",
}


def _numpy_globals() -> list[Any]:
    """The numpy classes a released file's mAP / cmc values need, under the module
    paths of numpy 1 (``numpy.core``, the authors') and numpy 2 (``numpy._core``)."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list[Any] = [np.ndarray, np.dtype]
    allowed += [type(np.dtype(code)) for code in ("f2", "f4", "f8", "i4", "i8", "u1", "b1")]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(multiarray, name)
        allowed += [(fn, f"{root}.multiarray.{name}") for root in ("numpy.core", "numpy._core")]
    return allowed


def _plain(value: Any) -> Any:
    """A released file's extra value as a plain Python value (numpy -> float/int/list)."""
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return f"<{type(value).__name__}>"  # e.g. an optimizer state: noted, not kept


def read_released(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The network's state dict and the other entries of a released checkpoint.

    Returns:
        (net, extras): tensors by key (``module.`` stripped); extras such as
        ``epoch``, ``mAP``, ``cmc`` as plain Python values (empty for a bare state dict).

    Raises:
        UserError: missing or unreadable file, pickled objects, no tensors found.
    """
    obj = load_tensor_file(path, "released checkpoint", allowed=_numpy_globals(),
                           resave=RESAVE)
    extras: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("net"), dict):
        extras = {str(k): _plain(v) for k, v in obj.items() if k != "net"}
        obj = obj["net"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise UserError(f"{path}: expected the authors' checkpoint ({{'net': state_dict, ...}}) "
                        "or a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}  # saved from DataParallel
    return dict(obj), extras


def network_of(net: dict[str, torch.Tensor]) -> str | None:
    """Which published network a state dict holds: agw (also CAJ's), deen, deen-regdb,
    mscmnet."""
    if any(k.startswith("layerATT") for k in net):
        return "mscmnet"
    if any(k.startswith("DEE.") for k in net):
        return "deen" if any(k.startswith("MFA3.") for k in net) else "deen-regdb"
    if any(k.startswith("NL_") for k in net):
        return "agw"
    return None


def check_network(source: str, network: str, cfg: CfgNode, where: str,
                  file: str = "the file") -> None:
    """Refuse a config that does not build the file's published network.

    Raises:
        UserError: the file holds another source's network, or a MODEL key differs.
    """
    family = network.split("-")[0]
    if source not in FAMILY_SOURCES[family]:
        raise UserError(f"--from {source}, but {file} holds {NETWORK_LABELS[network]}: "
                        f"use --from {' or '.join(FAMILY_SOURCES[family])}")
    wrong = [f"{key} = {format_value(now)} (expected {format_value(expected)})"
             for key, expected, now in network_differences(recipe(NETWORK_RECIPES[network]),
                                                           cfg)]
    if wrong:
        raise UserError(f"{where} does not build {NETWORK_LABELS[network]}, which {file} "
                        f"holds: {'; '.join(wrong)}")


@dataclass
class Conversion:
    """Our model state dict filled from a published one, and what was (not) used."""

    state: dict[str, torch.Tensor]
    num_classes: int
    network: str
    used: int
    unused: dict[str, int]
    from_config: list[str] = field(default_factory=list)
    counters_zeroed: list[str] = field(default_factory=list)


def convert(source: str, net: dict[str, torch.Tensor], cfg: CfgNode,
            where: str = "config", file: str = "the file") -> Conversion:
    """Fill the state dict of the config's network from a published state dict.

    Args:
        source: agw, caj, deen or mscmnet.
        net: the published state dict (as ``read_released`` returns it).
        cfg: a config building the published network (MODEL.PRETRAIN_PATH ignored).
        where: how to name the config in errors.
        file: how to name the released file in errors.

    Raises:
        UserError: another network, a missing key, a shape mismatch, or a tensor the
            config's network has no place for.
    """
    network = network_of(net)
    if network is None:
        raise UserError(f"{file} holds no published {LABELS[source]} network (no NL_* or "
                        f"DEE.* keys; first keys: {short_list(list(net))})")
    check_network(source, network, cfg, where, file)
    if "classifier.weight" not in net or net["classifier.weight"].dim() != 2:
        raise UserError(f"{file} has no classifier.weight (classes x features): the number "
                        "of classes is unknown")
    num_classes = int(net["classifier.weight"].shape[0])
    model = build_model(with_values(cfg, MODEL__PRETRAIN_PATH=""), num_classes)
    own = model.state_dict()
    table, own_only = key_table(model)
    extra = [k for k in own_only if k not in OWN_ONLY]
    if extra:
        raise UserError(f"{where}: the network has tensors the published one lacks: "
                        f"{short_list(extra)} (modality heads come from LOSS.TERMS modality_id/kl)")
    missing = [pub for ours, pub in table.items()
               if pub not in net and not ours.endswith("num_batches_tracked")]
    if missing:
        raise UserError(f"{file} lacks {len(missing)} tensor(s) of {NETWORK_LABELS[network]}: "
                        f"{short_list(missing)}")
    shapes = [f"{pub} {tuple(net[pub].shape)} (expected {tuple(own[ours].shape)})"
              for ours, pub in table.items() if pub in net and net[pub].shape != own[ours].shape]
    if shapes and network == "mscmnet" and "layerATT0.ln_1.weight" in net:
        _check_attention_size(net, own, table, cfg, where, file)
    if shapes:
        raise UserError(f"{file}: shapes differ from {NETWORK_LABELS[network]}: "
                        f"{short_list(shapes)}")
    used = set(table.values())
    unused, unexpected = count_by_group([k for k in net if k not in used],
                                        cfg.MODEL.LAST_STAGE, network)
    if unexpected:
        raise UserError(f"{file} has {len(unexpected)} tensor(s) {NETWORK_LABELS[network]} "
                        f"has no place for: {short_list(unexpected)}")
    state = dict(own)  # OWN_ONLY entries keep the config's value (GeM's fixed p = 3)
    zeroed = []
    for ours, pub in table.items():
        if pub in net:
            state[ours] = net[pub].detach().to(own[ours].dtype).clone()
        else:  # a file from a torch without BatchNorm batch counters
            state[ours] = torch.zeros_like(own[ours])
            zeroed.append(pub)
    model.load_state_dict(state)  # strict: the table covers the network exactly
    return Conversion(state, num_classes, network, len(used & set(net)), unused,
                      [k for k in own_only if k in OWN_ONLY], zeroed)


def _check_attention_size(net: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                          table: dict[str, str], cfg: CfgNode, where: str, file: str) -> None:
    """Refuse, in one line, attention blocks built for another layer3 map than the config's."""
    ours = next(k for k, pub in table.items() if pub == "layerATT0.ln_1.weight")
    theirs, mine = int(net["layerATT0.ln_1.weight"].numel()), int(own[ours].numel())
    if theirs != mine:
        size = ",".join(map(str, cfg.DATA.SIZE_TRAIN))
        raise UserError(f"{file}: its attention blocks take a layer3 map of {theirs} positions "
                        f"(the published 384x192 input: 24x12 = 288); {where}'s DATA.SIZE_TRAIN "
                        f"{size} gives {mine}: set DATA.SIZE_TRAIN and DATA.SIZE_TEST to the "
                        "size the file was trained at")


def set_test_keys(source: str, cfg: CfgNode) -> tuple[CfgNode, list[tuple[str, Any, Any]]]:
    """``cfg`` with the source's test-time keys; returns it and the (key, old, new) changes."""
    changes = []
    for key, value in published_test_keys(source).items():
        section, name = key.split(".")
        if cfg[section][name] != value:
            changes.append((key, cfg[section][name], value))
    values = {key.replace(".", "__"): new for key, _, new in changes}
    return with_values(cfg, MODEL__PRETRAIN_PATH="", **values), changes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ImportReport:
    """What an import did, for the summary the tool prints."""

    source: str
    src: str
    out: str
    conversion: Conversion
    tensors: int
    extras: dict[str, Any]
    test_changes: list[tuple[str, Any, Any]]

    def lines(self) -> list[str]:
        """The summary: what was filled, what was left unused, which test feature."""
        c = self.conversion
        own = ", ".join(f"{k} {self.extras[k]:.4g}" if isinstance(self.extras[k], float)
                        else f"{k} {self.extras[k]}" for k in ("epoch", "mAP", "mINP")
                        if k in self.extras)
        config = f", {', '.join(c.from_config)} from the config" if c.from_config else ""
        lines = [f"imported {LABELS[self.source]} {self.src} -> {self.out}: "
                 f"{len(c.state)} tensors of ours, {c.used} from the file's {self.tensors}"
                 f"{config}; {c.num_classes} classes" + (f" (file: {own})" if own else "")]
        lines += [f"  unused, as expected: {label}: {n} tensors" for label, n in c.unused.items()]
        if c.counters_zeroed:
            lines.append(f"  {len(c.counters_zeroed)} BatchNorm batch counters absent from the "
                         "file, set to 0")
        set_text = ("; set " + ", ".join(f"{k} {format_value(old)} -> {format_value(new)}"
                                         for k, old, new in self.test_changes)
                    if self.test_changes else "; the config's TEST keys already matched")
        lines.append(f"  test feature: {TEST_FEATURES[self.source]}{set_text}")
        return lines


def import_checkpoint(source: str, src: str | os.PathLike, config: str | os.PathLike,
                      out: str | os.PathLike, overrides: list[str] | None = None
                      ) -> ImportReport:
    """Convert a released checkpoint into a training checkpoint of this project.

    The written dict has ``model``, ``config`` (the config with ``overrides``,
    MODEL.PRETRAIN_PATH emptied, the source's TEST keys set), ``num_classes``,
    ``epoch`` (epochs completed: the file's 0-based ``epoch`` + 1, else 0) and
    ``source`` (network, file, sha256, the file's own entries such as mAP).

    Args:
        source: agw, caj, deen or mscmnet.
        src: the released file.
        config: an .ini building the published network (e.g. configs/agw/sysumm.ini).
        out: where to write the checkpoint (atomically).
        overrides: KEY VALUE pairs applied to the config.

    Raises:
        UserError: see ``read_released``, ``check_network`` and ``convert``.
    """
    if source not in SOURCES:
        raise UserError(f"--from {source}: expected one of {', '.join(SOURCES)}")
    cfg = load_config(config, overrides or [])
    net, extras = read_released(src)
    conversion = convert(source, net, cfg, where=str(config), file=str(src))
    test_cfg, changes = set_test_keys(source, cfg)
    epoch = extras.get("epoch")
    ckpt = {"model": conversion.state, "config": config_to_ini(test_cfg),
            "num_classes": conversion.num_classes,
            "epoch": int(epoch) + 1 if isinstance(epoch, int) else 0,
            "source": {"from": source, "network": conversion.network, "file": str(src),
                       "sha256": _sha256(Path(src)), "entries": extras,
                       "unused": conversion.unused}}
    atomic_torch_save(ckpt, out)
    return ImportReport(source, str(src), str(out), conversion, len(net), extras, changes)
