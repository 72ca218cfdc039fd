"""Load ``.ini`` configurations onto the typed defaults (``utils.config_schema``).

Every value is parsed to the type of its default; unknown sections and keys,
values of the wrong type and values outside a key's choices are refused with
one line naming the file, the key and what was expected.

Inheritance: a file may start with ``_BASE_ = other.ini`` (before its first
section; the path is relative to the including file). The base is merged first,
then the file's own keys, so a per-dataset recipe holds only what differs from
its method's base. Chains are allowed; a cycle or a missing base is refused with
one line naming the files. A merged configuration is written out whole and flat
(``config_to_ini``): a run folder's ``config.ini`` needs no base to be read again.

Keys that moved (``MODEL.DEE_BRANCHES`` -> ``DEEN.BRANCHES``) are read under their
new names, with a warning; configurations saved before ``TEST.DISTANCE`` named its
squared form ``sqeuclidean`` are read with the meaning they were written with.
"""
from __future__ import annotations

import configparser
import difflib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from utils.config_schema import (
    RENAMES,
    Key,
    add_config_section,
    check_config,
    format_value,
    network_keys,
)
from utils.defaults import DEFAULTS
from utils.errors import UserError
from utils.io import atomic_write_text

__all__ = ["Key", "add_config_section", "config_from_ini_text", "config_to_ini",
           "dataset_root", "format_value", "get_default_config", "load_config",
           "merge_ini_text", "merge_overrides", "network_keys", "save_config", "with_values"]

logger = logging.getLogger(__name__)

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}

# Keys whose string value is a path: '~' and '$VARS' expand in them.
_PATH_SUFFIXES = ("_PATH", "ROOT", "_DIR")

# The first line of a merged configuration; the one of format 1 (before keys moved
# into sections and TEST.DISTANCE euclidean meant the squared distance).
HEADER = "# Merged configuration, format 2: defaults + config files + command-line overrides."
HEADER_V1 = "# Merged configuration: defaults + config file + command-line overrides."
# Values whose meaning changed, for texts of format 1: full key -> {old: new}.
V1_VALUES = {"TEST.DISTANCE": {"euclidean": "sqeuclidean"}}

_BASE = re.compile(r"^\s*_BASE_\s*[=:]\s*(.*?)\s*$", re.IGNORECASE)


def get_default_config() -> CfgNode:
    """Return a mutable copy of the defaults (every section added so far)."""
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


def _set(cfg: CfgNode, section: str, key: str, text: str, where: str,
         version: int = 2) -> None:
    section_u, key_u = section.strip().upper(), key.strip().upper()
    moved = RENAMES.get(f"{section_u}.{key_u}")
    if moved and (section_u not in cfg or key_u not in cfg[section_u]):
        if version > 1:
            logger.warning("%s: %s.%s is now %s; read as such", where, section_u, key_u, moved)
        section_u, key_u = moved.split(".")
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
    full = f"{section_u}.{key_u}"
    if version == 1 and text.strip().lower() in V1_VALUES.get(full, {}):
        text = V1_VALUES[full][text.strip().lower()]
    # The type comes from the default, not the current value (which may be an empty tuple).
    node[key_u] = _parse_value(full, text, DEFAULTS[section_u][key_u], where)


def _split_base(text: str) -> tuple[str | None, str]:
    """(the ``_BASE_`` value or None, the text without that line)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            break
        match = _BASE.match(line)
        if match:
            return match.group(1).strip("'\""), "\n".join(lines[:i] + lines[i + 1:])
    return None, text


def merge_ini_text(cfg: CfgNode, text: str, where: str) -> None:
    """Merge the contents of an .ini file (``text``, no ``_BASE_``) into ``cfg`` in place."""
    version = 1 if text.lstrip().startswith(HEADER_V1) else 2
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), strict=True
    )
    parser.optionxform = str  # keep key case; keys are matched upper-cased
    try:
        parser.read_string(text, source=where)
    except configparser.MissingSectionHeaderError:
        raise UserError(f"{where}: not a valid .ini file (a key before the first [SECTION]; "
                        "only _BASE_ = FILE may stand there)") from None
    except configparser.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{where}: not a valid .ini file ({first})") from None
    for section in parser.sections():
        for key, value in parser.items(section):
            _set(cfg, section, key, value, where, version)


def read_chain(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """The file and its bases as (path, text without ``_BASE_``), the root base first.

    Raises:
        UserError: a missing file or base, or a cycle of bases.
    """
    chain: list[tuple[Path, str]] = []
    seen: list[Path] = []
    p = Path(path)
    including: Path | None = None
    while True:
        if not p.is_file():
            if including is None:
                raise UserError(f"{p}: config file not found")
            raise UserError(f"{including}: _BASE_ {p} not found")
        resolved = p.resolve()
        if resolved in seen:
            loop = " -> ".join(str(s) for s in [*seen, resolved])
            raise UserError(f"{including}: _BASE_ makes a cycle: {loop}")
        seen.append(resolved)
        base, text = _split_base(p.read_text(encoding="utf-8"))
        chain.append((p, text))
        if base is None:
            return chain[::-1]
        including, p = p, (p.parent / os.path.expanduser(base))


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
    """Return the defaults merged with the .ini at ``path`` (its bases first) and
    ``overrides``, frozen.

    Raises:
        UserError: missing file or base, a base cycle, unknown section or key, wrong
            type, bad value.
    """
    cfg = get_default_config()
    where = "command line"
    if path is not None:
        chain = read_chain(path)
        for i, (file, text) in enumerate(chain):
            bases = [str(f) for f, _ in chain[:i]][::-1]
            merge_ini_text(cfg, text, f"{file} (bases: {', '.join(bases)})" if bases
                           else str(file))
        where = str(Path(path))
    merge_overrides(cfg, overrides)
    check_config(cfg, where)
    cfg.freeze()
    return cfg


def config_from_ini_text(text: str, where: str = "checkpoint config") -> CfgNode:
    """Rebuild a frozen config from text written by ``config_to_ini`` (any format)."""
    cfg = get_default_config()
    merge_ini_text(cfg, text, where)
    check_config(cfg, where)
    cfg.freeze()
    return cfg


def with_values(cfg: CfgNode, **values: Any) -> CfgNode:
    """A frozen copy of ``cfg`` with ``SECTION__KEY=value`` replaced."""
    out = cfg.clone()
    out.defrost()
    for name, value in values.items():
        section, key = name.split("__")
        out[section][key] = value
    out.freeze()
    return out


def config_to_ini(cfg: CfgNode) -> str:
    """Serialise every key of ``cfg`` as a loadable .ini text (flat: no ``_BASE_``)."""
    lines = [HEADER]
    # The core sections in their order, then the added ones by name: the text does not
    # depend on the order the packages were imported in.
    core = [s for s in ("DATA", "MODEL", "LOSS", "TRAIN", "TEST", "TARGET") if s in cfg]
    for section in core + sorted(s for s in cfg if s not in core):
        lines.append(f"\n[{section}]")
        for key, value in cfg[section].items():
            lines.append(f"{key} = {format_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: CfgNode, path: str | os.PathLike) -> None:
    """Write ``cfg`` as an .ini file atomically."""
    atomic_write_text(path, config_to_ini(cfg))


def config_differences(old: CfgNode, new: CfgNode) -> list[tuple[str, Any, Any]]:
    """Keys whose value differs between two configs, as (SECTION.KEY, old, new)."""
    diffs = []
    for section in new:
        for key, value in new[section].items():
            before = old[section][key] if key in old.get(section, {}) else None
            if before != value:
                diffs.append((f"{section}.{key}", before, value))
    return diffs


def network_differences(old: CfgNode, new: CfgNode) -> list[tuple[str, Any, Any]]:
    """The keys that change the network between two configs, as (key, old, new)."""
    keys = set(network_keys(new))
    return [d for d in config_differences(old, new) if d[0] in keys]


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
