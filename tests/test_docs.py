"""The documents hold: the generated configuration reference is current, every link and
command in README.md and docs/*.md points at something that exists, and every entry
point has one flag style and lists examples in --help."""
import argparse
import shlex
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import check_docs  # noqa: E402
import config_reference  # noqa: E402

from utils.cli import Parser  # noqa: E402
from utils.defaults import DEFAULTS  # noqa: E402

ENTRY_POINTS = ["train.py", "train_regdb.py", "train_sysumm.py", "train_llcm.py", "test.py",
                *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tools").glob("*.py")
                        if "__main__" in p.read_text(encoding="utf-8"))]


def test_every_key_has_a_comment():
    from utils.config_schema import SECTIONS

    comments = config_reference.key_comments()
    comments.update({f"{s.name}.{k.name}": k.help for s in SECTIONS.values() for k in s.keys})
    missing = [f"{s}.{k}" for s in DEFAULTS for k in DEFAULTS[s] if not comments.get(f"{s}.{k}")]
    assert not missing, f"keys without a comment line or help: {missing}"


def test_config_reference_is_current():
    text = (REPO / "docs" / "configs.md").read_text(encoding="utf-8")
    assert config_reference.render(text) == text, (
        "docs/configs.md is stale: run python tools/config_reference.py --write")
    for section in DEFAULTS:
        for key in DEFAULTS[section]:
            assert f"| `{key}` |" in text


def test_readme_is_short_and_shows_the_two_commands_first():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    head = readme[:readme.index("\n## ", readme.index("\n## ") + 1)]  # up to the 2nd section
    assert "make demo" in head and "make test" in head


def test_links_and_commands_of_the_documents_hold():
    names = {p.name for p in check_docs.documents(REPO)}
    assert names >= {"README.md", "datasets.md", "configs.md", "recipes.md", "evaluation.md",
                     "published_models.md", "extending.md", "gpu.md", "troubleshooting.md"}
    assert check_docs.check_docs(REPO) == []


def copy_of_repo(tmp_path: Path) -> Path:
    """The repository with its documents copied and everything else linked."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name in ("README.md", "docs"):
            (shutil.copytree if entry.is_dir() else shutil.copy)(entry, root / entry.name)
        elif entry.name not in (".git", ".venv", "output"):
            (root / entry.name).symlink_to(entry)
    return root


def test_the_check_fails_on_a_broken_link_command_or_target(tmp_path):
    root = copy_of_repo(tmp_path)
    assert check_docs.check_docs(root) == []
    page = root / "docs" / "datasets.md"
    lines = len(page.read_text(encoding="utf-8").splitlines())
    with page.open("a", encoding="utf-8") as f:
        f.write("\nSee [the layouts](layout.md) and [GPUs](gpu.md#no-such-heading).\n\n"
                "```bash\npython test.py --model-path m.pth --no-such-flag 1\n"
                "python tools/no_such_tool.py --help\nmake no-such-target\n```\n"
                "Or `torchrun --nproc_per_node=2 train.py --config c.ini --trail 3`.\n")
    assert check_docs.check_docs(root) == [
        f"docs/datasets.md:{lines + 2}: link layout.md: no such file",
        f"docs/datasets.md:{lines + 2}: link gpu.md#no-such-heading: no heading "
        "#no-such-heading in gpu.md",
        f"docs/datasets.md:{lines + 5}: test.py has no option --no-such-flag",
        f"docs/datasets.md:{lines + 6}: script tools/no_such_tool.py does not exist",
        f"docs/datasets.md:{lines + 7}: make target 'no-such-target' is not in the Makefile",
        f"docs/datasets.md:{lines + 9}: train.py has no option --trail",
    ]
    readme = root / "README.md"  # a link to another document's heading holds
    readme.write_text(readme.read_text(encoding="utf-8")
                      + "[x](docs/datasets.md#pointing-the-configs-at-them)\n", encoding="utf-8")
    assert [p.split(":")[0] for p in check_docs.check_docs(root)] == ["docs/datasets.md"] * 6


def underscore(option: str) -> str:
    """``--save-features=f.npz`` -> ``--save_features=f.npz``."""
    name, eq, value = option.partition("=")
    return "--" + name[2:].replace("-", "_") + eq + value


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_point_help_lists_examples_that_parse_in_both_spellings(script):
    parser = check_docs.Checker(REPO).parser(REPO / script)
    assert isinstance(parser, Parser), f"{script}: {parser}"
    help_text = parser.format_help()
    assert "examples:" in help_text and parser.examples
    for example in parser.examples:
        assert example in help_text
        tokens = shlex.split(example)
        argv = tokens[next(i for i, t in enumerate(tokens) if t.endswith(".py")) + 1:]
        underscored = [underscore(t) if t.startswith("--") else t for t in argv]
        assert parser.parse_args(underscored) == parser.parse_args(argv), example
        # Every recipe an example names is one of the repository's.
        for token in argv:
            if token.startswith("configs/") and token.endswith(".ini"):
                assert (REPO / token).is_file(), f"{script}: {example} names a missing {token}"
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and "_" in flag:
                pytest.fail(f"{script}: {flag} is not written with dashes")
            if flag.startswith("--") and "-" in flag[2:]:
                assert parser.dashed([underscore(flag)]) == [flag]


def test_test_py_takes_both_spellings():
    parser = check_docs.Checker(REPO).parser(REPO / "test.py")
    dashed = parser.parse_args(["--model-path", "m.pth", "TEST.FLIP", "yes",
                                "--save-features=f.npz"])
    underscored = parser.parse_args(["--model_path", "m.pth", "TEST.FLIP", "yes",
                                     "--save_features=f.npz"])
    assert dashed == underscored
    assert (dashed.model_path, dashed.save_features, dashed.overrides) == (
        "m.pth", "f.npz", ["TEST.FLIP", "yes"])
    # A value after a bare -- and a KEY VALUE pair are never rewritten.
    assert parser.dashed(["--", "--model_path"]) == ["--", "--model_path"]
    assert parser.dashed(["DATA.ROOT", "--no_such"]) == ["DATA.ROOT", "--no_such"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--model_pat", "m.pth"])


def test_a_parser_without_examples_is_refused():
    with pytest.raises(ValueError, match="at least one example"):
        Parser(examples=[])
    assert isinstance(Parser(examples=["python x.py"]), argparse.ArgumentParser)
