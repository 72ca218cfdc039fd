"""What a configuration may hold: sections, keys, their choices, ranges and checks.

The core sections (``DATA``, ``MODEL``, ``LOSS``, ``TRAIN``, ``TEST``, ``TARGET``) are the
defaults of ``utils.defaults``. A method or a dataset adds a section of its own with
:func:`add_config_section` when its module is imported (detectron2's
``add_<method>_config`` habit): its keys, each with a default and a help line, their
choices and ranges, which of them change the network, its consistency check and the
old names of keys that moved into it. Nothing here imports the packages that add
sections: keys naming a registered entry take their valid values from
``utils.registry.CONFIG_REGISTRIES``, filled by the registries themselves.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yacs.config import CfgNode

from utils.defaults import DEFAULTS
from utils.errors import UserError
from utils.registry import CONFIG_REGISTRIES

# Keys restricted to a fixed set of values (compared case-insensitively). Keys that
# name a registered entry (a dataset, backbone, ...) take theirs from CONFIG_REGISTRIES.
CHOICES: dict[str, tuple[str, ...]] = {
    "DATA.RE_ASPECT": ("log", "uniform"),
    "MODEL.POOLING": ("avg", "gem"),
    "LOSS.TRIPLET_DISTANCE": ("euclidean", "cosine"),
    "LOSS.TRIPLET_MINING": ("all", "cross"),
    "LOSS.METRIC_FEAT": ("pool", "bn"),
    "TRAIN.SELECT": ("last", "val", "test"),
    "TEST.FEAT": ("bn", "pool", "pool+bn"),
    "TEST.VIEWS": ("all", "original"),
    "TEST.DISTANCE": ("sqeuclidean", "euclidean", "cosine", "dot"),
    "TRAIN.INSERTED_LR": ("new", "backbone"),
    "TRAIN.AMP_DTYPE": ("auto", "bf16", "fp16"),
}

# Inclusive numeric ranges (None = unbounded on that side).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "DATA.TRIAL": (1, None), "DATA.VAL_IDS": (0, None), "DATA.FLIP_PROB": (0, 1),
    "DATA.PADDING": (0, None), "DATA.RE_PROB": (0, 1), "DATA.RE_TRIES": (1, None),
    "DATA.GRAY_PROB_VISIBLE": (0, 1), "DATA.GRAY_PROB_INFRARED": (0, 1),
    "DATA.CHANNEL_AUG_PROB": (0, 1), "DATA.NUM_WORKERS": (0, None),
    "DATA.TRAIN_BATCH_SIZE": (2, None), "DATA.SAMPLE_ID_INSTANCE": (1, None),
    "DATA.TEST_BATCH_SIZE": (1, None), "MODEL.LAST_STRIDE": (1, 2), "MODEL.SHARED_FROM": (0, 4),
    "MODEL.GEM_P": (1, None), "MODEL.NECK_INIT_STD": (0, None), "MODEL.LAST_STAGE": (3, 4),
    "MODEL.HEAD_DIM": (1, None), "LOSS.LABEL_SMOOTH": (0, 1), "LOSS.MARGIN": (0, None),
    "LOSS.ID_WEIGHT": (0, None), "LOSS.TRIPLET_WEIGHT": (0, None),
    "LOSS.CENTER_WEIGHT": (0, None), "LOSS.CENTER_LR": (0, 1),
    "LOSS.MODALITY_ID_WEIGHT": (0, None), "LOSS.KL_WEIGHT": (0, None),
    "TRAIN.BASE_LR": (0, None), "TRAIN.NEW_LR_FACTOR": (0, None),
    "TRAIN.HEAD_LR_FACTOR": (0, None), "TRAIN.MOMENTUM": (0, 0.999),
    "TRAIN.WEIGHT_DECAY": (0, None), "TRAIN.WEIGHT_DECAY_BIAS": (0, None),
    "TRAIN.GAMMA": (0, 1), "TRAIN.WARMUP_EPOCHS": (0, None), "TRAIN.WARMUP_FACTOR": (0, 1),
    "TRAIN.MIN_LR_FACTOR": (0, 1), "TRAIN.MAX_EPOCHS": (1, None),
    "TRAIN.ITERS_PER_EPOCH": (0, None), "TRAIN.CHECKPOINT_PERIOD": (1, None),
    "TRAIN.EVAL_PERIOD": (0, None), "TRAIN.LOG_PERIOD": (1, None),
    "TEST.RERANK_K1": (1, None), "TEST.RERANK_K2": (1, None), "TEST.RERANK_LAMBDA": (0, 1),
    "TEST.NUM_TRIALS": (1, None), "TEST.MAX_RANK": (1, None),
}

# MODEL keys that do not change the network: resuming or testing on another device or
# without the ImageNet file at hand is fine, the weights come from the checkpoint.
FREE_MODEL_KEYS = {"MODEL.DEVICE", "MODEL.PRETRAIN_PATH"}

# Old full key -> new full key, for configs written before a key moved (filled by
# the sections that took them).
RENAMES: dict[str, str] = {}

# Section keys that change the network (MODEL keys do, FREE_MODEL_KEYS aside).
NETWORK_KEYS: set[str] = set()

Check = Callable[[CfgNode, str], None]
CHECKS: list[Check] = []


@dataclass(frozen=True)
class Key:
    """One key of a section: name, default (its type is the key's), help line.

    Attributes:
        name: upper-case key name.
        default: the default value (bool, int, float, str or a tuple of one of them).
        help: one line for the configuration reference.
        choices: allowed string values, if restricted.
        range: inclusive (low, high) bounds of a number (None = unbounded).
        network: the key changes the network (refused when resuming or testing a
            checkpoint of another value).
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    range: tuple[float | None, float | None] | None = None
    network: bool = False


@dataclass
class Section:
    """A section added by a method or a dataset (see :func:`add_config_section`)."""

    name: str
    title: str
    keys: list[Key]
    owner: str
    renames: dict[str, str] = field(default_factory=dict)
    check: Check | None = None


# Section name -> its description, in the order the sections were added.
SECTIONS: dict[str, Section] = {}


def add_config_section(name: str, title: str, keys: list[Key], owner: str,
                       check: Check | None = None,
                       renames: dict[str, str] | None = None) -> Section:
    """Add a section of keys to every configuration (called once, at import).

    Args:
        name: the section, upper case (``DEEN``).
        title: what the section configures, for the reference.
        keys: its keys.
        owner: the module that adds it (``modeling.methods.deen``), for the reference.
        check: ``check(cfg, where)`` raising UserError on an inconsistent value.
        renames: old full key (``MODEL.DEE_BRANCHES``) -> this section's key name
            (``BRANCHES``): configs written before the move still load.

    Raises:
        ValueError: the section exists already or a key is malformed (programming errors).
    """
    if name in DEFAULTS or name != name.upper():
        raise ValueError(f"config section {name!r} exists already or is not upper case")
    node = CfgNode()
    for key in keys:
        if key.name != key.name.upper() or key.name in node:
            raise ValueError(f"key {name}.{key.name} is not upper case or given twice")
        node[key.name] = key.default
        full = f"{name}.{key.name}"
        if key.choices:
            CHOICES[full] = key.choices
        if key.range:
            RANGES[full] = key.range
        if key.network:
            NETWORK_KEYS.add(full)
    DEFAULTS[name] = node
    moved = {old: f"{name}.{new}" for old, new in (renames or {}).items()}
    RENAMES.update(moved)
    if check is not None:
        CHECKS.append(check)
    section = Section(name, title, list(keys), owner, moved, check)
    SECTIONS[name] = section
    return section


def network_keys(cfg: CfgNode) -> list[str]:
    """The full keys of ``cfg`` that define the network."""
    model = [f"MODEL.{k}" for k in cfg.MODEL if f"MODEL.{k}" not in FREE_MODEL_KEYS]
    return model + sorted(k for k in NETWORK_KEYS if k.split(".")[0] in cfg)


def format_value(value: Any) -> str:
    """A value as it is written in an .ini file (booleans as yes/no, tuples and lists
    comma-separated)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple | list):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def _registry_names(cfg: CfgNode, where: str) -> None:
    for full_key, reg in CONFIG_REGISTRIES.items():
        section, _, key = full_key.partition(".")
        if section not in cfg or key not in cfg[section]:
            continue
        value = cfg[section][key]
        names = [v.lower() for v in value] if isinstance(value, tuple) else [value.lower()]
        for name in names:
            reg.check(name, where, full_key)
        cfg[section][key] = tuple(names) if isinstance(value, tuple) else names[0]


def check_config(cfg: CfgNode, where: str) -> None:
    """Check choices, registry names, ranges and every section's own rules.

    Raises:
        UserError: on the first bad value, naming ``where`` and the key.
    """
    for full_key, choices in CHOICES.items():
        section, key = full_key.split(".")
        value = cfg[section][key].lower()
        if value not in choices:
            raise UserError(
                f"{where}: {full_key} = {cfg[section][key]!r} is not one of {', '.join(choices)}"
            )
        cfg[section][key] = value
    _registry_names(cfg, where)
    for full_key, (lo, hi) in RANGES.items():
        section, key = full_key.split(".")
        value = cfg[section][key]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise UserError(f"{where}: {full_key} = {value} must be {bounds}")
    _check_core(cfg, where)
    for check in CHECKS:
        check(cfg, where)


def _check_core(cfg: CfgNode, where: str) -> None:
    batch, k = cfg.DATA.TRAIN_BATCH_SIZE, cfg.DATA.SAMPLE_ID_INSTANCE
    if batch % (2 * k):
        raise UserError(
            f"{where}: DATA.TRAIN_BATCH_SIZE = {batch} must be a multiple of "
            f"2 x DATA.SAMPLE_ID_INSTANCE = {2 * k} (identities x K visible + K infrared)"
        )
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
        terms = CONFIG_REGISTRIES.get("LOSS.TERMS", {})
        raise UserError(f"{where}: LOSS.TERMS is empty; name at least one of "
                        f"{', '.join(terms)}")
    if len(set(cfg.LOSS.TERMS)) != len(cfg.LOSS.TERMS):
        raise UserError(f"{where}: LOSS.TERMS = {', '.join(cfg.LOSS.TERMS)} names a term twice")


def remove_config_section(name: str) -> None:
    """Undo :func:`add_config_section` (for tests that add a section for a while)."""
    section = SECTIONS.pop(name)
    del DEFAULTS[name]
    for key in section.keys:
        full = f"{name}.{key.name}"
        CHOICES.pop(full, None)
        RANGES.pop(full, None)
        NETWORK_KEYS.discard(full)
    for old in section.renames:
        RENAMES.pop(old, None)
    if section.check is not None and section.check in CHECKS:
        CHECKS.remove(section.check)
