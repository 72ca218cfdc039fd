"""Check that README.md and docs/*.md point at things that exist.

Every relative link must name an existing file (and, with ``#anchor``, a heading of
that document); every ``python SCRIPT ...`` / ``torchrun ... SCRIPT ...`` command in a
code block or an inline code span must name an existing script whose parser accepts
its options; every ``make TARGET`` must name a target of the Makefile. The test suite
runs it.
"""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.cli import Parser  # noqa: E402

PYTHONS = re.compile(r"^(\S*/)?python(3(\.\d+)?)?$")
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`]+)`")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
NEGATIVE_NUMBER = re.compile(r"^-\d")
MAKE_TARGET = re.compile(r"^([A-Za-z0-9_.-]+)\s*:(?!=)")
# Loaded parsers by the script's resolved path: loading runs the script's imports.
_PARSERS: dict[Path, argparse.ArgumentParser | str] = {}


def documents(root: Path) -> list[Path]:
    """README.md and every docs/*.md under ``root``."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))]
            if p.is_file()]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def split_markdown(text: str) -> tuple[str, list[tuple[int, str]], set[str]]:
    """The prose (code-block lines blanked, so offsets keep their line numbers), the
    code-block lines with their 1-based numbers, and the headings' anchors.

    Code-block lines ending in a backslash are joined with the next one, as a shell
    would read them.
    """
    prose: list[str] = []
    code: list[tuple[int, str]] = []
    anchors: set[str] = set()
    in_code, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            in_code = not in_code
            prose.append("")
            continue
        if not in_code:
            prose.append(line)
            if line.startswith("#"):
                anchors.add(slug(line.lstrip("#")))
            continue
        prose.append("")
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        code.append((start, pending + line))
        pending = ""
    return "\n".join(prose), code, anchors


def make_targets(root: Path) -> set[str]:
    """The targets the Makefile defines."""
    path = root / "Makefile"
    if not path.is_file():
        return set()
    return {m.group(1) for line in path.read_text(encoding="utf-8").splitlines()
            if (m := MAKE_TARGET.match(line)) and not m.group(1).startswith(".")}


class Checker:
    """Checks documents against the files, parsers and Makefile of one tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.targets = make_targets(root)
        self.parsers = _PARSERS
        self.anchors: dict[Path, set[str]] = {}

    def parser(self, script: Path) -> argparse.ArgumentParser | str:
        """The script's ``build_parser()``, or why there is none."""
        key = script.resolve()
        if key not in self.parsers:
            try:
                namespace = runpy.run_path(str(script), run_name="__check_docs__")
                build = namespace.get("build_parser")
                self.parsers[key] = build() if callable(build) else "has no build_parser()"
            except Exception as exc:  # a script that does not even import is a finding
                self.parsers[key] = f"cannot be loaded ({type(exc).__name__}: {exc})"
        return self.parsers[key]

    def heading_anchors(self, doc: Path) -> set[str]:
        if doc not in self.anchors:
            self.anchors[doc] = split_markdown(doc.read_text(encoding="utf-8"))[2]
        return self.anchors[doc]

    def link(self, doc: Path, target: str) -> str | None:
        """What is wrong with a link target, or None."""
        if SCHEME.match(target):
            return None
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            return "no such file"
        if anchor and dest.suffix == ".md" and anchor not in self.heading_anchors(dest):
            return f"no heading #{anchor} in {dest.name}"
        return None

    def command(self, tokens: list[str]) -> list[str]:
        """What is wrong with one shell command (tokens after variable assignments)."""
        while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
            tokens = tokens[1:]
        if not tokens:
            return []
        if tokens[0] == "make":
            return [f"make target {t!r} is not in the Makefile" for t in tokens[1:]
                    if not t.startswith("-") and "=" not in t and t not in self.targets]
        if PYTHONS.match(tokens[0]):
            if len(tokens) < 2 or tokens[1].startswith("-"):
                return []  # a bare interpreter or `python -m module`
            index = 1
        elif tokens[0] == "torchrun":
            index = next((i for i, t in enumerate(tokens) if t.endswith(".py")), 0)
            if not index:
                return []
        else:
            return []
        script = self.root / tokens[index]
        if not script.is_file():
            return [f"script {tokens[index]} does not exist"]
        parser = self.parser(script)
        if isinstance(parser, str):
            return [f"script {tokens[index]} {parser}"]
        known = parser._option_string_actions
        args = tokens[index + 1:]
        if isinstance(parser, Parser):
            args = parser.dashed(args)
        problems = []
        for token in args:
            if token == "--":
                break
            flag = token.partition("=")[0]
            if flag.startswith("-") and not NEGATIVE_NUMBER.match(flag) and flag not in known:
                problems.append(f"{tokens[index]} has no option {flag}")
        return problems

    def commands(self, line: str) -> list[str]:
        """Problems of every command on one line (split at &&, ||, ; and |)."""
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            return []  # not shell (an example's Python, a table)
        problems, segment = [], []
        for token in [*tokens, ";"]:
            if token in ("&&", "||", ";", "|"):
                problems += self.command(segment)
                segment = []
            else:
                segment.append(token)
        return problems

    def document(self, doc: Path) -> list[str]:
        """Every problem of one document, as ``path:line: what``."""
        prose, code, _ = split_markdown(doc.read_text(encoding="utf-8"))
        name = doc.relative_to(self.root).as_posix()

        def line_of(offset: int) -> int:
            return prose.count("\n", 0, offset) + 1

        problems = []
        for m in INLINE_CODE.finditer(prose):  # a span may wrap onto the next line
            problems += [f"{name}:{line_of(m.start())}: {p}"
                         for p in self.commands(m.group(1).replace("\n", " "))]
        # Links outside code spans; blanking keeps the offsets.
        text = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)
        for m in LINK.finditer(text):
            if (why := self.link(doc, m.group(1))) is not None:
                problems.append(f"{name}:{line_of(m.start())}: link {m.group(1)}: {why}")
        for number, line in code:
            problems += [f"{name}:{number}: {p}" for p in self.commands(line)]
        return sorted(problems, key=lambda p: int(p.split(":")[1]))


def check_docs(root: Path = REPO) -> list[str]:
    """Every problem of README.md and docs/*.md under ``root``, as ``file:line: what``."""
    checker = Checker(root)
    return [p for doc in documents(root) for p in checker.document(doc)]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/check_docs.py``."""
    parser = Parser(prog="tools/check_docs.py", description=__doc__.splitlines()[0],
                    examples=["python tools/check_docs.py",
                              "python tools/check_docs.py --root /tmp/clone"])
    parser.add_argument("--root", type=Path, default=REPO, help="repository to check")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    problems = check_docs(args.root.resolve())
    print("\n".join(problems) if problems else "documents: every link and command holds")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
