"""Load ``.ini`` configurations onto the typed defaults of ``utils.defaults``.

Every value is parsed to the type of its default; unknown sections and keys,
values of the wrong type and values outside a key's choices are refused with
one line naming the file, the key and what was expected.
"""
from __future__ import annotations

import configparser
import difflib
import importlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from utils.defaults import DEFAULTS
from utils.errors import UserError
from utils.io import atomic_write_text

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}

# Keys whose string value is a path: '~' and '$VARS' expand in them.
_PATH_SUFFIXES = ("_PATH", "ROOT", "_DIR")

# Keys restricted to a fixed set of values (compared case-insensitively). Keys
# that name a registered entry (a dataset, backbone, ...) are in REGISTRY_KEYS.
CHOICES: dict[str, tuple[str, ...]] = {
    "DATA.RE_ASPECT": ("log", "uniform"),
    "MODEL.POOLING": ("avg", "gem"),
    "LOSS.TRIPLET_DISTANCE": ("euclidean", "cosine"),
    "LOSS.TRIPLET_MINING": ("all", "cross"),
    "LOSS.METRIC_FEAT": ("pool", "bn"),
    "TRAIN.SELECT": ("last", "val", "test"),
    "TEST.FEAT": ("bn", "pool", "pool+bn"),
    "TEST.VIEWS": ("all", "original"),
    "TEST.DISTANCE": ("euclidean", "cosine", "dot"),
    "LOSS.WRT_FORM": ("exact", "published"),
    "TRAIN.INSERTED_LR": ("new", "backbone"),
    "TRAIN.AMP_DTYPE": ("auto", "bf16", "fp16"),
    "TEST.GALLERY": ("auto", "official", "random"),
}

# Keys whose valid values are the names of a registry: (module, attribute). The
# registries are imported when a config is checked, so the names are always the
# ones the builders accept.
REGISTRY_KEYS: dict[str, tuple[str, str]] = {
    "DATA.DATASET_NAME": ("data", "DATASETS"),
    "MODEL.NAME": ("modeling.backbone", "BACKBONES"),
    "LOSS.TERMS": ("layers.criterion", "LOSS_TERMS"),
    "TRAIN.OPTIMIZER": ("solver.optimizer", "OPTIMIZERS"),
    "TRAIN.SCHEDULER": ("solver.scheduler", "SCHEDULERS"),
    "DATA.RESIZE": ("data.transforms", "RESIZE_FILTERS"),
    "DATA.CHANNEL_AUG_VISIBLE": ("data.transforms", "CHANNEL_RULES"),
    "DATA.CHANNEL_AUG_COPY": ("data.transforms", "CHANNEL_RULES"),
    "DATA.CHANNEL_AUG_INFRARED": ("data.transforms", "CHANNEL_RULES"),
}

# Inclusive numeric ranges (None = unbounded on that side).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "DATA.TRIAL": (1, None),
    "DATA.VAL_IDS": (0, None),
    "DATA.FLIP_PROB": (0, 1),
    "DATA.PADDING": (0, None),
    "DATA.RE_PROB": (0, 1),
    "DATA.RE_TRIES": (1, None),
    "DATA.GRAY_PROB_VISIBLE": (0, 1),
    "DATA.GRAY_PROB_INFRARED": (0, 1),
    "DATA.CHANNEL_AUG_PROB": (0, 1),
    "DATA.NUM_WORKERS": (0, None),
    "DATA.TRAIN_BATCH_SIZE": (2, None),
    "DATA.SAMPLE_ID_INSTANCE": (1, None),
    "DATA.TEST_BATCH_SIZE": (1, None),
    "MODEL.LAST_STRIDE": (1, 2),
    "MODEL.SHARED_FROM": (0, 4),
    "MODEL.GEM_P": (1, None),
    "MODEL.NON_LOCAL_REDUCTION": (1, None),
    "MODEL.NON_LOCAL_INNER": (0, None),
    "MODEL.NECK_INIT_STD": (0, None),
    "MODEL.LAST_STAGE": (3, 4),
    "MODEL.DEE_BRANCHES": (0, None),
    "MODEL.DEE_AFTER": (1, 4),
    "LOSS.ADP_WEIGHT": (0, None),
    "LOSS.ADP_ALPHA": (0, None),
    "LOSS.ADP_GAMMA": (0, None),
    "LOSS.CPM_WEIGHT": (0, None),
    "LOSS.CPM_MARGIN": (0, None),
    "LOSS.ORTH_WEIGHT": (0, None),
    "MODEL.HEAD_DIM": (1, None),
    "LOSS.LABEL_SMOOTH": (0, 1),
    "LOSS.MARGIN": (0, None),
    "LOSS.ID_WEIGHT": (0, None),
    "LOSS.TRIPLET_WEIGHT": (0, None),
    "LOSS.WRT_WEIGHT": (0, None),
    "LOSS.CENTER_WEIGHT": (0, None),
    "LOSS.CENTER_LR": (0, 1),
    "LOSS.MODALITY_ID_WEIGHT": (0, None),
    "LOSS.KL_WEIGHT": (0, None),
    "TRAIN.BASE_LR": (0, None),
    "TRAIN.NEW_LR_FACTOR": (0, None),
    "TRAIN.HEAD_LR_FACTOR": (0, None),
    "TRAIN.MOMENTUM": (0, 0.999),
    "TRAIN.WEIGHT_DECAY": (0, None),
    "TRAIN.WEIGHT_DECAY_BIAS": (0, None),
    "TRAIN.GAMMA": (0, 1),
    "TRAIN.WARMUP_EPOCHS": (0, None),
    "TRAIN.WARMUP_FACTOR": (0, 1),
    "TRAIN.MIN_LR_FACTOR": (0, 1),
    "TRAIN.MAX_EPOCHS": (1, None),
    "TRAIN.ITERS_PER_EPOCH": (0, None),
    "TRAIN.CHECKPOINT_PERIOD": (1, None),
    "TRAIN.EVAL_PERIOD": (0, None),
    "TRAIN.LOG_PERIOD": (1, None),
    "TEST.RERANK_K1": (1, None),
    "TEST.RERANK_K2": (1, None),
    "TEST.RERANK_LAMBDA": (0, 1),
    "TEST.NUM_TRIALS": (1, None),
    "TEST.MAX_RANK": (1, None),
}


def get_default_config() -> CfgNode:
    """Return a mutable copy of the defaults."""
    return DEFAULTS.clone()


def _type_name(value: Any) -> str:
    if isinstance(value, tuple):
        inner = {bool: "booleans", int: "integers", float: "numbers"}.get(
            type(value[0]) if value else str, "strings")
        return f"a comma-separated list of {inner}"
    if isinstance(value, bool):
        return "a boolean (yes/no/true/false/on/off/1/0)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a string"


def _parse_scalar(text: str, default: Any) -> Any:
    """Parse ``text`` to the type of ``default``; raise ValueError on mismatch."""
    text = text.strip()
    if isinstance(default, bool):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text


def _parse_value(full_key: str, text: str, default: Any, where: str) -> Any:
    try:
        if isinstance(default, tuple):
            body = text.strip()
            if body[:1] in "([" and body[-1:] in ")]":
                body = body[1:-1]
            items = [t for t in (s.strip() for s in body.split(",")) if t]
            proto = default[0] if default else ""
            value: Any = tuple(_parse_scalar(t, proto) for t in items)
        else:
            value = _parse_scalar(text, default)
    except ValueError:
        raise UserError(
            f"{where}: {full_key} = {text.strip()!r} is not {_type_name(default)}"
        ) from None
    if isinstance(value, str) and full_key.endswith(_PATH_SUFFIXES):
        value = _expand_path(full_key, value, where)
    return value


def _expand_path(full_key: str, value: str, where: str) -> str:
    expanded = os.path.expanduser(os.path.expandvars(value))
    missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
    if missing:
        raise UserError(
            f"{where}: {full_key} = {value!r} uses the environment variable "
            f"${missing[0]}, which is not set"
        )
    return expanded


def _closest(name: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(name.upper(), list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else ""


def _set(cfg: CfgNode, section: str, key: str, text: str, where: str) -> None:
    section_u, key_u = section.strip().upper(), key.strip().upper()
    if section_u not in cfg:
        raise UserError(
            f"{where}: unknown section [{section.strip()}]{_closest(section_u, cfg.keys())} "
            f"(valid sections: {', '.join(cfg.keys())})"
        )
    node = cfg[section_u]
    if key_u not in node:
        # The key may live in another section (an exact name wins over a near one).
        others = [f"{s}.{k}" for s in cfg for k in cfg[s] if k == key_u]
        hint = f"; did you mean {others[0]}?" if others else ""
        if not hint:
            hint = _closest(key_u, node.keys()).replace("mean ", f"mean {section_u}.")
        raise UserError(f"{where}: unknown key {section_u}.{key.strip()}{hint}")
    # The type comes from the default, not the current value (which may be an empty tuple).
    node[key_u] = _parse_value(f"{section_u}.{key_u}", text,
                                 DEFAULTS[section_u][key_u], where)


def _check(cfg: CfgNode, where: str) -> None:
    """Check choices and ranges of every key; raise UserError on the first bad one."""
    for full_key, choices in CHOICES.items():
        section, key = full_key.split(".")
        value = cfg[section][key].lower()
        if value not in choices:
            raise UserError(
                f"{where}: {full_key} = {cfg[section][key]!r} is not one of {', '.join(choices)}"
            )
        cfg[section][key] = value
    for full_key in REGISTRY_KEYS:
        section, key = full_key.split(".")
        value = cfg[section][key]
        names = [v.lower() for v in value] if isinstance(value, tuple) else [value.lower()]
        for name in names:
            registry(full_key).check(name, where, full_key)
        cfg[section][key] = tuple(names) if isinstance(value, tuple) else names[0]
    for full_key, (lo, hi) in RANGES.items():
        section, key = full_key.split(".")
        value = cfg[section][key]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise UserError(f"{where}: {full_key} = {value} must be {bounds}")
    batch, k = cfg.DATA.TRAIN_BATCH_SIZE, cfg.DATA.SAMPLE_ID_INSTANCE
    if batch % (2 * k):
        raise UserError(
            f"{where}: DATA.TRAIN_BATCH_SIZE = {batch} must be a multiple of "
            f"2 x DATA.SAMPLE_ID_INSTANCE = {2 * k} (identities x K visible + K infrared)"
        )
    if len(cfg.MODEL.NON_LOCAL_BLOCKS) != 4 or min(cfg.MODEL.NON_LOCAL_BLOCKS) < 0:
        raise UserError(
            f"{where}: MODEL.NON_LOCAL_BLOCKS must be 4 non-negative counts (layer1..layer4)"
        )
    m = cfg.MODEL
    last = m.LAST_STAGE
    if len(m.MFA) != 4 or set(m.MFA) - {0, 1} or any(m.MFA[last:]):
        raise UserError(f"{where}: MODEL.MFA = {format_value(m.MFA)} must be 4 flags 0 or 1 "
                        f"(layer1..layer4), none after layer{last} (MODEL.LAST_STAGE)")
    if m.DEE_BRANCHES and not max(m.SHARED_FROM, 1) <= m.DEE_AFTER <= last:
        raise UserError(f"{where}: MODEL.DEE_AFTER = {m.DEE_AFTER} must be a shared stage: "
                        f"{max(m.SHARED_FROM, 1)}..{last} (MODEL.SHARED_FROM = "
                        f"{m.SHARED_FROM}, MODEL.LAST_STAGE = {last})")
    if last < 4 and m.NON_LOCAL_BLOCKS[3]:
        raise UserError(f"{where}: MODEL.NON_LOCAL_BLOCKS puts blocks in layer4, which "
                        "MODEL.LAST_STAGE = 3 leaves out")
    weights = tuple(cfg.TEST.PART_WEIGHTS)
    if len(weights) != 2 or min(weights) < 0 or not any(weights):
        raise UserError(f"{where}: TEST.PART_WEIGHTS = {format_value(weights)} must be 2 "
                        "non-negative numbers, not both 0: the pooled and the BN parts' weights")
    if weights != (1.0, 1.0) and cfg.TEST.FEAT != "pool+bn":
        raise UserError(f"{where}: TEST.PART_WEIGHTS = {format_value(weights)} weighs the parts "
                        f"of TEST.FEAT pool+bn; TEST.FEAT is {cfg.TEST.FEAT}")
    if len(cfg.DATA.RE_FILL) != 3:
        raise UserError(f"{where}: DATA.RE_FILL must be 3 numbers: the R, G, B fill in "
                        f"normalised space")
    for name in ("SIZE_TRAIN", "SIZE_TEST"):
        size = cfg.DATA[name]
        if len(size) != 2 or min(size) < 1:
            raise UserError(f"{where}: DATA.{name} must be two positive integers: height, width")
    if not cfg.LOSS.TERMS:
        raise UserError(f"{where}: LOSS.TERMS is empty; name at least one of "
                        f"{', '.join(registry('LOSS.TERMS'))}")
    if len(set(cfg.LOSS.TERMS)) != len(cfg.LOSS.TERMS):
        raise UserError(f"{where}: LOSS.TERMS = {', '.join(cfg.LOSS.TERMS)} names a term twice")


def merge_ini_text(cfg: CfgNode, text: str, where: str) -> None:
    """Merge the contents of an .ini file (``text``) into ``cfg`` in place."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), strict=True
    )
    parser.optionxform = str  # keep key case; keys are matched upper-cased
    try:
        parser.read_string(text, source=where)
    except configparser.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{where}: not a valid .ini file ({first})") from None
    for section in parser.sections():
        for key, value in parser.items(section):
            _set(cfg, section, key, value, where)


def merge_overrides(cfg: CfgNode, overrides: Sequence[str]) -> None:
    """Merge ``KEY VALUE`` pairs given on the command line (``TRAIN.BASE_LR 0.01``)."""
    if len(overrides) % 2:
        raise UserError(
            f"command line: override {overrides[-1]!r} has no value; "
            "use pairs like TRAIN.BASE_LR 0.01"
        )
    for full_key, value in zip(overrides[::2], overrides[1::2]):
        if full_key.count(".") != 1:
            raise UserError(
                f"command line: override key {full_key!r} must be SECTION.KEY, e.g. TRAIN.BASE_LR"
            )
        section, key = full_key.split(".")
        _set(cfg, section, key, value, "command line")


def load_config(path: str | os.PathLike | None = None,
                overrides: Sequence[str] = ()) -> CfgNode:
    """Return the defaults merged with the .ini at ``path`` and ``overrides``, frozen.

    Raises:
        UserError: missing file, unknown section or key, wrong type, bad value.
    """
    cfg = get_default_config()
    where = "command line"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: config file not found")
        where = str(p)
        merge_ini_text(cfg, p.read_text(encoding="utf-8"), where)
    merge_overrides(cfg, overrides)
    _check(cfg, where)
    cfg.freeze()
    return cfg


def config_from_ini_text(text: str, where: str = "checkpoint config") -> CfgNode:
    """Rebuild a frozen config from text written by ``config_to_ini``."""
    cfg = get_default_config()
    merge_ini_text(cfg, text, where)
    _check(cfg, where)
    cfg.freeze()
    return cfg


def registry(full_key: str) -> Any:
    """The registry whose names are the valid values of ``full_key`` (see REGISTRY_KEYS)."""
    module, attribute = REGISTRY_KEYS[full_key]
    return getattr(importlib.import_module(module), attribute)


def with_values(cfg: CfgNode, **values: Any) -> CfgNode:
    """A frozen copy of ``cfg`` with ``SECTION__KEY=value`` replaced."""
    out = cfg.clone()
    out.defrost()
    for name, value in values.items():
        section, key = name.split("__")
        out[section][key] = value
    out.freeze()
    return out


def format_value(value: Any) -> str:
    """A value as it is written in an .ini file (booleans as yes/no, tuples and lists
    comma-separated)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple | list):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def config_to_ini(cfg: CfgNode) -> str:
    """Serialise every key of ``cfg`` as a loadable .ini text."""
    lines = ["# Merged configuration: defaults + config file + command-line overrides."]
    for section in cfg:
        lines.append(f"\n[{section}]")
        for key, value in cfg[section].items():
            lines.append(f"{key} = {format_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: CfgNode, path: str | os.PathLike) -> None:
    """Write ``cfg`` as an .ini file atomically."""
    atomic_write_text(path, config_to_ini(cfg))


def dataset_root(cfg: CfgNode) -> str:
    """Return DATA.ROOT, or the dataset's environment variable when it is empty.

    Raises:
        UserError: neither is set.
    """
    if cfg.DATA.ROOT:
        return cfg.DATA.ROOT
    var = f"{cfg.DATA.DATASET_NAME.upper()}_ROOT"
    value = os.environ.get(var, "")
    if not value:
        raise UserError(
            f"DATA.ROOT is empty and the environment variable {var} is not set; "
            f"set one of them to the {cfg.DATA.DATASET_NAME} dataset folder"
        )
    return os.path.expanduser(value)
