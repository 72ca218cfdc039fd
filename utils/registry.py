"""Named registries: the only lists of valid names (datasets, backbones, losses, ...).

A registry maps a name to what builds the thing. A registry made for a
configuration key enters itself in ``CONFIG_REGISTRIES``, from which
``utils.config`` derives the key's allowed values when a config is checked:
the packages that own the registries register them when they are imported, so
``utils`` never imports them. Adding an entry is all it takes to make a name
valid; a miss names the key and lists the valid names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from utils.errors import UserError

T = TypeVar("T")

# Configuration key (SECTION.KEY) -> the registry whose names are its valid values.
CONFIG_REGISTRIES: dict[str, Registry] = {}


class Registry(dict[str, T]):
    """A ``dict`` of name -> entry whose failed lookups are user errors.

    Args:
        key: the configuration key that names an entry, e.g. ``DATA.DATASET_NAME``.
        what: what an entry is, for messages (``dataset``, ``backbone``, ...).
        config_keys: the configuration keys whose values are names of this registry
            (default ``(key,)`` when ``key`` is one); each enters ``CONFIG_REGISTRIES``.
    """

    def __init__(self, key: str, what: str, config_keys: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.key, self.what = key, what
        for full_key in (config_keys if config_keys is not None
                         else (key,) if "*" not in key else ()):
            CONFIG_REGISTRIES[full_key] = self

    def __setitem__(self, name: str, entry: T) -> None:
        # Configuration values are matched in lower case.
        if not isinstance(name, str) or name != name.lower():
            raise ValueError(f"{self.what} name {name!r} must be a lower-case string")
        super().__setitem__(name, entry)

    def update(self, *args: object, **kwargs: T) -> None:
        for name, entry in dict(*args, **kwargs).items():
            self[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object."""
        def add(entry: T) -> T:
            if name in self:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self[name] = entry
            return entry
        return add

    def unknown(self, name: str, where: str = "", key: str = "") -> str:
        """The one-line message for a name that is not registered."""
        prefix = f"{where}: " if where else ""
        return (f"{prefix}{key or self.key} = {name!r} is not a known {self.what}; "
                f"valid names: {', '.join(self)}")

    def check(self, name: str, where: str = "", key: str = "") -> None:
        """Raise UserError unless ``name`` is registered (``key``: the config key naming it,
        when several keys share the registry)."""
        if name not in self:
            raise UserError(self.unknown(name, where, key))

    def __missing__(self, name: str) -> T:
        raise UserError(self.unknown(name))
