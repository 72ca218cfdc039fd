"""torchrun with 2 CPU processes (gloo): sharded data, identical weights, rank-0-only outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from utils.config import config_to_ini, load_config

REPO = Path(__file__).resolve().parents[1]

# Records what each rank trained on and its final parameters, then runs the real script.
RUNNER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {repo!r})
    import torch
    from engine import trainer as T
    from engine.distributed import unwrap
    from functools import partial

    from engine.launch import train_main
    main_sysumm = partial(train_main, "train_sysumm.py", "sysumm")

    out, rank, seen = sys.argv[1], int(os.environ["RANK"]), []
    real_step, real_fit = T.Trainer.train_step, T.Trainer.fit

    def step(self, batch, *args):
        seen.append(batch["index"].tolist())
        return real_step(self, batch, *args)

    def fit(self):
        result = real_fit(self)
        params = {{k: v.detach().clone() for k, v in unwrap(self.model).named_parameters()}}
        torch.save(params, os.path.join(out, f"params_rank{{rank}}.pt"))
        with open(os.path.join(out, f"seen_rank{{rank}}.json"), "w") as f:
            json.dump(seen, f)
        return result

    T.Trainer.train_step, T.Trainer.fit = step, fit
    sys.exit(main_sysumm(sys.argv[2:]))
""")


def _torchrun(tmp: Path, args: list[str]) -> subprocess.CompletedProcess:
    script = tmp / "runner.py"
    script.write_text(RUNNER.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _config(sysu_root: Path, out: Path, *extra: str):
    return load_config(None, [
        "DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(sysu_root),
        "DATA.SYSU_VAL_AS_TRAIN", "no", "DATA.SIZE_TRAIN", "32,16", "DATA.SIZE_TEST", "32,16",
        "DATA.TRAIN_BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0",
        "MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu",
        "MODEL.SHARED_FROM", "1", "MODEL.LAST_STRIDE", "2",
        "LOSS.TERMS", "id,triplet,center", "TRAIN.MAX_EPOCHS", "2", "TRAIN.ITERS_PER_EPOCH", "2",
        "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.STEPS", "", "TRAIN.SELECT", "val",
        "TRAIN.EVAL_PERIOD", "1", "TRAIN.SYNC_BN", "yes", "TRAIN.DETERMINISTIC", "yes",
        "TEST.NUM_TRIALS", "2", "TRAIN.OUTPUT_PATH", str(out), *extra])


def _params(tmp: Path) -> list[dict]:
    return [torch.load(tmp / f"params_rank{r}.pt", weights_only=True) for r in (0, 1)]


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def ddp_run(sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A 2-epoch torchrun of train_sysumm.py; returns (its tmp dir, its config)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = _config(sysu_root, tmp / "run")
    ini = tmp / "tiny.ini"
    ini.write_text(config_to_ini(cfg))
    proc = _torchrun(tmp, ["--config", str(ini)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, cfg


def test_two_cpu_processes_shard_identities_and_end_identical(ddp_run) -> None:
    tmp_path, cfg = ddp_run
    run = tmp_path / "run"
    seen = [json.loads((tmp_path / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4  # 2 epochs x 2 steps on each rank
    records = _train_pids(cfg)
    for b0, b1 in zip(*seen):
        pids0, pids1 = {records[i] for i in b0}, {records[i] for i in b1}
        assert pids0 and pids1 and not pids0 & pids1  # each step: disjoint identities
    _assert_equal(*_params(tmp_path))

    # Only rank 0 wrote: one copy of every line, checkpoints and results in place.
    log = (run / "log.txt").read_text()
    assert log.count("epoch 2/2 done") == 1
    assert "x2" in log and "TRAIN.SYNC_BN ignored" in log
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["eval"]["split"] for x in lines] == ["val", "val"]
    for name in ("last.pth", "best.pth", "results.json", "config.ini"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert len(ckpt["rng"]) == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    results = json.loads((run / "results.json").read_text())
    assert len(results["settings"]) == 4  # all/indoor x single/multi-shot


def _train_pids(cfg) -> list[int]:
    import data

    return [r.pid for r in data.build_dataset(cfg, verbose=False).train]


def test_resumed_torchrun_matches_an_uninterrupted_one(ddp_run, sysu_root: Path,
                                                       tmp_path: Path) -> None:
    first, _ = ddp_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    ini = first / "tiny.ini"
    proc = _torchrun(resumed, ["--config", str(ini), "--resume", str(first / "run" / "last.pth"),
                               "TRAIN.MAX_EPOCHS", "3",
                               "TRAIN.OUTPUT_PATH", str(resumed / "run")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in (resumed / "run" / "log.txt").read_text()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = _torchrun(fresh, ["--config", str(ini), "TRAIN.MAX_EPOCHS", "3",
                             "TRAIN.OUTPUT_PATH", str(fresh / "run")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = _params(resumed), _params(fresh)
    _assert_equal(a[0], a[1])
    _assert_equal(a[0], b[0])

