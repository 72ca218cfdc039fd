"""Configuration: typed parsing, unknown keys, overrides, round trip, every key read."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from utils.config import (
    config_from_ini_text,
    config_to_ini,
    dataset_root,
    get_default_config,
    load_config,
    save_config,
)
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "c.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_values_parse_to_the_defaults_types(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_HOME", "/data/home")
    path = write(tmp_path, """
[DATA]
SIZE_TRAIN = 288, 144
SIZE_TEST = (256, 128)
FLIP_PROB = 0.25
NUM_WORKERS = 2
CACHE = on
SYSU_VAL_AS_TRAIN = No
ROOT = $DATA_HOME/RegDB   # trailing comment
[MODEL]
PRETRAIN_PATH = ~/weights/r50.pth
[TRAIN]
BASE_LR = 1e-4
STEPS = 20, 50
AMP = 0
[LOSS]
TERMS = id, wrt
""")
    cfg = load_config(path)
    assert cfg.DATA.SIZE_TRAIN == (288, 144)
    assert cfg.DATA.SIZE_TEST == (256, 128)
    assert cfg.DATA.FLIP_PROB == 0.25 and isinstance(cfg.DATA.FLIP_PROB, float)
    assert cfg.DATA.NUM_WORKERS == 2 and isinstance(cfg.DATA.NUM_WORKERS, int)
    assert cfg.DATA.CACHE is True
    assert cfg.SYSUMM.VAL_AS_TRAIN is False  # moved from DATA.SYSU_VAL_AS_TRAIN
    assert cfg.DATA.ROOT == "/data/home/RegDB"
    assert cfg.MODEL.PRETRAIN_PATH == str(Path.home() / "weights/r50.pth")
    assert cfg.TRAIN.BASE_LR == pytest.approx(1e-4)
    assert cfg.TRAIN.STEPS == (20, 50)
    assert cfg.TRAIN.AMP is False
    assert cfg.LOSS.TERMS == ("id", "wrt")
    assert cfg.is_frozen()


@pytest.mark.parametrize("text", ["yes", "true", "on", "1", "YES", "True"])
def test_bool_true_spellings(text):
    assert load_config(None, ["DATA.CACHE", text]).DATA.CACHE is True


@pytest.mark.parametrize("text", ["no", "false", "off", "0", "Off"])
def test_bool_false_spellings(text):
    assert load_config(None, ["TRAIN.AMP", text]).TRAIN.AMP is False


def test_lowercase_keys_and_sections_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, "[train]\nbase_lr = 0.5\n"))
    assert cfg.TRAIN.BASE_LR == 0.5


def test_unknown_key_names_file_key_and_closest(tmp_path):
    path = write(tmp_path, "[TRAIN]\nOPTIMAZER = Adam\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "OPTIMAZER" in msg and "did you mean TRAIN.OPTIMIZER?" in msg
    assert "\n" not in msg


def test_key_in_the_wrong_section_is_pointed_to(tmp_path):
    path = write(tmp_path, "[MODEL]\nOUTPUT_PATH = ./out\n")
    with pytest.raises(UserError, match=r"MODEL\.OUTPUT_PATH.*TRAIN\.OUTPUT_PATH"):
        load_config(path)


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[SOLVER]\nBASE_LR = 0.1\n")
    with pytest.raises(UserError, match=r"unknown section \[SOLVER\]"):
        load_config(path)


@pytest.mark.parametrize("key,value,expected", [
    ("TRAIN.BASE_LR", "fast", "a number"),
    ("DATA.NUM_WORKERS", "2.5", "an integer"),
    ("DATA.CACHE", "maybe", "a boolean"),
    ("DATA.SIZE_TRAIN", "384, wide", "a comma-separated list of integers"),
])
def test_wrong_type_names_key_value_and_type(key, value, expected):
    with pytest.raises(UserError) as err:
        load_config(None, [key, value])
    msg = str(err.value)
    assert key in msg and repr(value) in msg and expected in msg


def test_wrong_type_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "[DATA]\nTRIAL = one\n")
    with pytest.raises(UserError, match=re.escape(str(path)) + r": DATA\.TRIAL = 'one'"):
        load_config(path)


@pytest.mark.parametrize("overrides,pattern", [
    (["MODEL.POOLING", "max"], r"MODEL\.POOLING = 'max' is not one of avg, gem"),
    (["LOSS.TERMS", "id, focal"],
     r"LOSS\.TERMS = 'focal' is not a known loss term; valid names: id, triplet"),
    (["LOSS.TERMS", "id, triplet, id"], r"LOSS\.TERMS = id, triplet, id names a term twice"),
    (["DATA.DATASET_NAME", "market"], r"DATA\.DATASET_NAME = 'market' is not a known "
                                      r"dataset; valid names: .*regdb.*sysumm"),
    (["MODEL.NAME", "vgg16"], r"MODEL\.NAME = 'vgg16' is not a known backbone; valid "
                              r"names: .*resnet50.*convnext_tiny"),
    (["TRAIN.OPTIMIZER", "rmsprop"], r"TRAIN\.OPTIMIZER = 'rmsprop' .* sgd, adam, adamw"),
    (["TRAIN.SCHEDULER", "poly"], r"TRAIN\.SCHEDULER = 'poly' .* multistep, cosine"),
    (["DATA.TRIAL", "0"], r"DATA\.TRIAL = 0 must be at least 1"),
    (["DATA.VAL_IDS", "-1"], r"DATA\.VAL_IDS = -1 must be at least 0"),
    (["DATA.TRAIN_BATCH_SIZE", "60"], r"multiple of 2 x DATA\.SAMPLE_ID_INSTANCE = 8"),
    (["TRAIN.BASE_LR"], r"override 'TRAIN.BASE_LR' has no value"),
    (["BASE_LR", "0.1"], r"must be SECTION\.KEY"),
    (["DATA.ROOT", "$SURELY_UNSET_VAR_X/d"], r"\$SURELY_UNSET_VAR_X, which is not set"),
])
def test_bad_overrides(overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        load_config(None, overrides)


def test_overrides_apply_after_the_file(tmp_path):
    path = write(tmp_path, "[TRAIN]\nBASE_LR = 0.1\nMAX_EPOCHS = 5\n")
    cfg = load_config(path, ["TRAIN.BASE_LR", "0.01", "DATA.ROOT", "/data/RegDB"])
    assert cfg.TRAIN.BASE_LR == 0.01 and cfg.TRAIN.MAX_EPOCHS == 5
    assert cfg.DATA.ROOT == "/data/RegDB"


def test_override_of_a_key_emptied_by_the_file_keeps_its_type(tmp_path):
    path = write(tmp_path, "[TRAIN]\nSTEPS =\n")
    assert load_config(path).TRAIN.STEPS == ()
    assert load_config(path, ["TRAIN.STEPS", "2, 5"]).TRAIN.STEPS == (2, 5)


def test_missing_file_and_broken_ini(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.ini")
    with pytest.raises(UserError, match="not a valid .ini file"):
        load_config(write(tmp_path, "BASE_LR = 1\n"))


def test_written_config_round_trips(tmp_path):
    cfg = load_config(None, ["TRAIN.STEPS", "", "DATA.SIZE_TRAIN", "96, 48",
                             "LOSS.TERMS", "id, triplet, kl", "TRAIN.BASE_LR", "3e-5"])
    save_config(cfg, tmp_path / "config.ini")
    again = load_config(tmp_path / "config.ini")
    assert again == cfg
    assert config_from_ini_text(config_to_ini(cfg)) == cfg
    assert again.TRAIN.STEPS == ()


@pytest.mark.parametrize("ini", sorted((REPO / "configs").rglob("*.ini")),
                         ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_configs_load(ini):
    cfg = load_config(ini)
    assert cfg.DATA.ROOT == ""  # never a hard-coded dataset path
    assert not cfg.MODEL.PRETRAIN_PATH.startswith("/")


def test_dataset_root_env_fallback(monkeypatch):
    cfg = load_config(None, ["DATA.DATASET_NAME", "sysumm"])
    monkeypatch.delenv("SYSUMM_ROOT", raising=False)
    with pytest.raises(UserError, match="SYSUMM_ROOT"):
        dataset_root(cfg)
    monkeypatch.setenv("SYSUMM_ROOT", "/data/SYSU-MM01")
    assert dataset_root(cfg) == "/data/SYSU-MM01"
    cfg = load_config(None, ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", "/x"])
    assert dataset_root(cfg) == "/x"


def test_every_key_is_read_by_the_code():
    """No inert keys: each key name appears in the code outside the defaults module."""
    sources = []
    for folder in ("data", "modeling", "layers", "solver", "engine", "utils", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name not in ("defaults.py", "config.py"):
                sources.append(path.read_text())
    sources += [p.read_text() for p in REPO.glob("*.py")]
    code = "\n".join(sources)
    cfg = get_default_config()
    unread = [f"{s}.{k}" for s in cfg for k in cfg[s]
              if not re.search(rf"\.{k}\b|\[[\"']{k}[\"']\]", code)]
    assert not unread, f"config keys that nothing reads: {unread}"


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, "[TRAIN]\nOPTIMAZER = Adam\n")
    proc = subprocess.run([sys.executable, "-c",
                           "from utils.errors import cli_entry\n"
                           "from utils.config import load_config\n"
                           f"cli_entry(lambda: load_config({str(path)!r}))()"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    from utils.io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_to_an_unwritable_place_is_one_line(tmp_path):
    from utils.io import atomic_write_text

    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match=r"folder: cannot write \(Is a directory\)"):
        atomic_write_text(tmp_path / "folder", "x")
    (tmp_path / "file").write_text("kept")
    with pytest.raises(UserError, match=r"file/sub.txt: cannot write \("):
        atomic_write_text(tmp_path / "file" / "sub.txt", "x")
    assert (tmp_path / "file").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # no leftovers
