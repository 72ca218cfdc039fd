"""The command-line parser every entry point uses: dashed long options, underscore aliases,
examples in ``--help``."""
from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

ALIAS_NOTE = "Long options are written with dashes; the underscore spelling (e.g. --model_path) " \
             "is accepted too."


class Parser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` with one flag style.

    Long options are declared with dashes (``--model-path``); ``--model_path`` on the
    command line is read as ``--model-path`` so that earlier spellings keep working,
    without listing both in ``--help``. Options may be given before or after the
    positional arguments. The epilog lists example commands, kept line by line.

    Args:
        examples: complete example command lines (``python script.py ...``); ``--help``
            lists them, and the tests parse them.
        description: one paragraph, wrapped to the terminal's usual width.
        notes: an optional paragraph after the examples.
        **kwargs: passed to ``argparse.ArgumentParser`` (``prog`` for instance).
    """

    def __init__(self, *, examples: Sequence[str], description: str = "", notes: str = "",
                 **kwargs) -> None:
        if not examples:
            raise ValueError("an entry point's parser lists at least one example")
        self.examples = list(examples)
        paragraphs = ["examples:\n" + "\n".join(f"  {e}" for e in self.examples)]
        paragraphs += [textwrap.fill(p, 88) for p in (notes, ALIAS_NOTE) if p]
        super().__init__(description=textwrap.fill(description, 88),
                         epilog="\n\n".join(paragraphs),
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def dashed(self, args: Sequence[str]) -> list[str]:
        """Rewrite ``--a_b`` (and ``--a_b=value``) as ``--a-b`` where that option exists.

        Tokens after a bare ``--`` and tokens that are not long options (values,
        ``KEY VALUE`` overrides) are left as they are.
        """
        out: list[str] = []
        args = list(args)
        for i, token in enumerate(args):
            if token == "--":
                return out + args[i:]
            name, eq, value = token.partition("=")
            if name.startswith("--") and "_" in name:
                candidate = "--" + name[2:].replace("_", "-")
                if candidate in self._option_string_actions:
                    token = candidate + eq + value
            out.append(token)
        return out

    def parse_args(self, args: Sequence[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """Options may come before, between or after the positional arguments
        (``argparse``'s intermixed parse)."""
        return self.parse_intermixed_args(args, namespace)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        """``argparse``'s parse, after ``dashed`` (``parse_args`` and the intermixed
        variants go through here)."""
        return super().parse_known_args(
            self.dashed(sys.argv[1:] if args is None else args), namespace)
