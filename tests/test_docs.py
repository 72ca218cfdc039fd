"""The README's configuration reference is generated from the defaults and current."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import config_reference  # noqa: E402

from utils.defaults import DEFAULTS  # noqa: E402


def test_every_key_has_a_comment():
    comments = config_reference.key_comments()
    missing = [f"{s}.{k}" for s in DEFAULTS for k in DEFAULTS[s] if not comments.get(f"{s}.{k}")]
    assert not missing, f"keys without a comment line in utils/defaults.py: {missing}"


def test_readme_reference_is_current():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert config_reference.render_readme(readme) == readme, (
        "README.md is stale: run python tools/config_reference.py --write")
    for section in DEFAULTS:
        for key in DEFAULTS[section]:
            assert f"| `{key}` |" in readme


def test_readme_shows_the_two_commands_first():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    head = readme[:600]
    assert "make demo" in head and "make test" in head
