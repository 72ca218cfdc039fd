"""User-facing errors: one clear line, non-zero exit, no traceback."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input (config, path, option, data).

    The message is a single line that names the file, key or value at fault
    and what was expected. Entry scripts print it and exit with status 2.
    """


def cli_entry(main: Callable[[], int | None]) -> Callable[[], None]:
    """Wrap an entry point so a ``UserError`` becomes ``error: ...`` and exit 2."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            code = main()
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper
