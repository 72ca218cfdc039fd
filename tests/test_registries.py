"""Registries are the only lists of names: the configuration accepts exactly their keys."""
from __future__ import annotations

from fnmatch import fnmatch

import pytest

from utils.config import get_default_config, load_config
from utils.config_schema import CHOICES
from utils.errors import UserError
from utils.registry import CONFIG_REGISTRIES, Registry

# The configuration keys named by a project registry.
REGISTRY_KEYS = sorted(k for k in CONFIG_REGISTRIES if k in {
    f"{s}.{key}" for s in get_default_config() for key in get_default_config()[s]})

ADDED = "zz_added_entry"


def default_names(full_key: str) -> tuple[str, ...]:
    section, key = full_key.split(".")
    value = get_default_config()[section][key]
    return value if isinstance(value, tuple) else (value,)


def accepts(full_key: str, name: str) -> bool:
    try:
        cfg = load_config(None, [full_key, name])
    except UserError:
        return False
    section, key = full_key.split(".")
    value = cfg[section][key]
    assert value == ((name.lower(),) if isinstance(value, tuple) else name.lower())
    return True


def refusal(full_key: str, name: str) -> str:
    with pytest.raises(UserError) as err:
        load_config(None, [full_key, name])
    return str(err.value)


@pytest.mark.parametrize("full_key", REGISTRY_KEYS)
def test_accepted_names_are_the_registry_keys(full_key, monkeypatch):
    entries = CONFIG_REGISTRIES[full_key]
    saved = dict(entries)
    try:
        check_registry(full_key, entries, monkeypatch)
    finally:  # the registry as it was, in its order (error messages list it)
        entries.clear()
        entries.update(saved)


def check_registry(full_key, entries, monkeypatch):
    assert isinstance(entries, Registry) and len(entries) >= 2
    assert fnmatch(full_key, entries.key)  # the registry's own errors name this key
    assert full_key not in CHOICES  # no second list of names
    for name in entries:
        assert accepts(full_key, name), name
    assert accepts(full_key, next(iter(entries)).upper())  # names are case-insensitive

    msg = refusal(full_key, ADDED)
    assert msg == (f"command line: {full_key} = '{ADDED}' is not a known {entries.what}; "
                   f"valid names: {', '.join(entries)}")

    monkeypatch.setitem(entries, ADDED, object())
    assert accepts(full_key, ADDED)
    assert refusal(full_key, "zz_other").endswith(f", {ADDED}")

    monkeypatch.delitem(entries, ADDED)
    assert not accepts(full_key, ADDED)
    victim = next(n for n in entries if n not in default_names(full_key))
    monkeypatch.delitem(entries, victim)
    msg = refusal(full_key, victim)
    assert f"'{victim}' is not a known" in msg and victim not in msg.split("valid names: ")[1]


def test_registry_lookups_and_duplicates():
    reg: Registry = Registry("SECTION.KEY", "widget")

    @reg.register("round")
    def round_widget() -> str:
        return "round"

    reg.register("square")(str)
    assert reg["round"] is round_widget and list(reg) == ["round", "square"]
    with pytest.raises(UserError, match=r"^SECTION.KEY = 'oval' is not a known widget; "
                                        r"valid names: round, square$"):
        reg["oval"]
    with pytest.raises(UserError, match=r"^here: OTHER.KEY = 'oval' .*valid names: round, "):
        reg.check("oval", "here", "OTHER.KEY")
    reg.check("square")
    with pytest.raises(ValueError, match="widget 'round' is registered twice"):
        reg.register("round")(str)
    # Config values are matched in lower case, so a name that is not could never be chosen.
    with pytest.raises(ValueError, match="widget name 'Oval' must be a lower-case string"):
        reg.register("Oval")(str)
    with pytest.raises(ValueError, match="widget name 'Oval' must be a lower-case string"):
        reg.update({"Oval": str})
