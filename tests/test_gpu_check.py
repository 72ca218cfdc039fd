"""The CUDA path's check, run on the CPU (``tools/gpu_check.py --cpu``), and the pieces it
relies on: the mixed-precision type key and torchrun's one-process group."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import runtime
from engine.distributed import init_distributed, shutdown_distributed
from tools.device_checks.common import recipe_name, shipped_configs
from utils.config import load_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode_runs_every_check_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu", "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    failed = {n: c["error"] for n, c in checks.items() if not c["passed"]}
    assert report["mode"] == "cpu" and report["passed"] and not failed, failed
    recipes = [recipe_name(c) for c in shipped_configs()]
    assert {"demo_synthetic", "agw/regdb", "caj/sysumm", "deen/llcm",
            "mscmnet/sysumm"} <= set(recipes)
    for name in recipes:  # none left out, MSCMNet's attention at the common tolerance
        assert checks[f"fp32_agreement[{name}]"]["figures"]["rel_l2"] <= 1e-4
        run = checks[f"training[{name},fp32]"]["figures"]
        assert run["last_mean"] < run["first_mean"] and run["iterations"] == 10
    assert checks["resume"]["figures"]["epoch"] == 1
    assert checks["eval_sysu"]["figures"]["difference"] <= 1e-9
    assert checks["torchrun"]["figures"]["test_exit"] == 0
    assert checks["train_speed[16]"]["figures"]["engine_img_s"] > 0
    assert checks["compile_speed"]["figures"]["speedup"] > 0
    assert "passed in" in proc.stdout and "train_speed[16]" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--only", "eval_(", "--output", "x.json"], "argument --only: not a regular expression"),
    (["--only", "no_such_check", "--output", "{tmp}/r.json"],
     "error: --only no_such_check: no check's name matches; the checks: fp32_agreement["),
    (["--output", "{tmp}/missing/r.json"], "is not a writable folder"),
])
def test_gpu_check_bad_options_are_one_line(args, message, tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no report written


def test_amp_dtype_key_picks_the_autocast_type(monkeypatch: pytest.MonkeyPatch) -> None:
    for native, auto in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, n=native: n and not
                            including_emulation)
        assert runtime.amp_dtype("auto") is auto
        assert runtime.amp_dtype("fp16") is torch.float16
    with pytest.raises(UserError, match="TRAIN.AMP_DTYPE = bf16 but .* no native bfloat16"):
        runtime.amp_dtype("bf16")
    cfg = load_config(None, ["TRAIN.AMP_DTYPE", "FP16"])
    assert cfg.TRAIN.AMP_DTYPE == "fp16"
    assert runtime.amp_settings(cfg, torch.device("cpu")) == (False, torch.float32)
    with pytest.raises(UserError, match="TRAIN.AMP_DTYPE = 'fp8' is not one of auto, bf16, fp16"):
        load_config(None, ["TRAIN.AMP_DTYPE", "fp8"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_launched_single_process_joins_a_process_group(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    cfg = load_config(None, ["MODEL.DEVICE", "cpu"])
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    info, _ = init_distributed(cfg)
    assert not info.enabled and not torch.distributed.is_initialized()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    try:
        info, device = init_distributed(cfg)
        assert info.launched and info.enabled and info.world_size == 1
        assert torch.distributed.get_backend() == "gloo" and device.type == "cpu"
    finally:
        shutdown_distributed()
    assert not torch.distributed.is_initialized()
