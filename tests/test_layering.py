"""``utils/`` is the ground floor: it imports nothing above it, statically or at run time."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABOVE = ("data", "modeling", "layers", "solver", "engine", "tools")
STATIC = re.compile(rf"^\s*(from|import)\s+({'|'.join(ABOVE)})(\.|\s|$)", re.M)
DYNAMIC = re.compile(r"import_module\(|__import__\(|importlib")


def test_no_upward_import_in_utils_source():
    found = []
    for path in sorted((REPO / "utils").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        found += [f"{path.name}: {m.group(0).strip()}" for m in STATIC.finditer(text)]
        found += [f"{path.name}: {m.group(0)}" for m in DYNAMIC.finditer(text)]
    assert found == []


def test_loading_a_config_imports_no_package_above_utils(tmp_path):
    ini = tmp_path / "c.ini"
    ini.write_text("[TRAIN]\nBASE_LR = 0.01\n")
    code = ("import sys; from utils.config import load_config, config_to_ini; "
            f"config_to_ini(load_config({str(ini)!r})); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ABOVE!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_checks_catch_an_upward_import(tmp_path):
    text = "import os\nfrom modeling import build_model\nx = importlib.import_module('data')\n"
    assert [m.group(2) for m in STATIC.finditer(text)] == ["modeling"]
    assert DYNAMIC.search(text)
