"""Command line of the training scripts: --config, --resume [PATH], --trial, overrides."""
from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from yacs.config import CfgNode

from utils.cli import Parser
from utils.config import load_config
from utils.errors import UserError

AUTO = "auto"
_OVERRIDE_KEY = re.compile(r"^[A-Za-z]+\.[A-Za-z0-9_]+$")


def train_parser(prog: str, dataset: str, trials: bool = False,
                 examples: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser shared by train.py and the train_<dataset>.py scripts.

    Args:
        prog: the script's name.
        dataset: what it trains, in words.
        trials: whether it has ``--trial`` (datasets in fixed train/test splits).
        examples: command lines for ``--help`` (default: two built from ``prog``).
    """
    examples = list(examples) or [f"python {prog} --config CONFIG.ini DATA.ROOT /data/DATASET",
                                  f"python {prog} --config CONFIG.ini --resume"]
    parser = Parser(
        prog=prog, examples=examples,
        description=f"Train on {dataset}, then test the selected model with the dataset's "
                    "protocol. Outputs go to TRAIN.OUTPUT_PATH.",
        notes="Overrides are KEY VALUE pairs, before or after the options, e.g. TRAIN.BASE_LR 0.01 "
              "TRAIN.MAX_EPOCHS 60. Multi-GPU: torchrun --nproc_per_node=N " + prog + " ...",
    )
    parser.add_argument("--config", required=True, help="the .ini configuration file")
    parser.add_argument(
        "--resume", nargs="?", const=AUTO, default=None, metavar="PATH",
        help="continue a run exactly where it stopped: from PATH, or without a value from "
             "last.pth in the run folder")
    if trials:
        parser.add_argument(
            "--trial", default=None, metavar="N|N,M,..|all",
            help="RegDB trial(s) to run, one model each, into OUTPUT_PATH/trial_<n>/ "
                 "(default: DATA.TRIAL); several trials also write summary.txt/.json")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="configuration overrides (options may come before or after them)")
    return parser


def parse_train_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
                     ) -> tuple[argparse.Namespace, CfgNode]:
    """Parse arguments and load the merged config.

    Options and overrides may be interleaved (``DATA.ROOT /data/RegDB --trial all``).
    ``--resume`` takes an optional path, so ``--resume TRAIN.MAX_EPOCHS 80`` is
    read as the automatic resume followed by an override.
    """
    args = parser.parse_intermixed_args(argv)
    if args.resume not in (None, AUTO) and _OVERRIDE_KEY.match(args.resume) \
            and len(args.opts) % 2 == 1:
        args.opts = [args.resume, *args.opts]
        args.resume = AUTO
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    cfg = load_config(args.config, args.opts)
    return args, cfg


def parse_trials(text: str | None, maximum: int | None) -> list[int] | None:
    """A trial option: ``None`` -> None (the caller's default); ``"all"`` -> 1..maximum
    (None when ``maximum`` is None: every trial of the protocol); ``"3"`` -> [3];
    ``"1,2"`` -> [1, 2].

    Args:
        text: the option's value.
        maximum: the largest valid trial (a dataset's split count), or None (any >= 1).

    Raises:
        UserError: not a trial number in range, a list of them, or all.
    """
    if text is None:
        return None
    if text.strip().lower() == "all":
        return list(range(1, maximum + 1)) if maximum else None
    trials: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1 or (maximum and int(part) > maximum):
            span = f"1..{maximum}" if maximum else ">= 1"
            raise UserError(f"--trial {text}: expected a trial number {span}, a comma-separated "
                            "list of them, or all")
        if int(part) not in trials:
            trials.append(int(part))
    return trials


def require_dataset(cfg: CfgNode, names: tuple[str, ...], script: str) -> None:
    """Refuse a config made for another dataset's script."""
    if cfg.DATA.DATASET_NAME not in names:
        raise UserError(
            f"{script} trains {' or '.join(names)} but the config has DATA.DATASET_NAME = "
            f"{cfg.DATA.DATASET_NAME}; use train.py, which trains any dataset")
