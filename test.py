"""Evaluate trained checkpoints with the official protocol of their dataset.

``python test.py --help`` lists examples. RegDB, one model per trial:
``--model-path 'out/trial_{trial}/best.pth' --trial all``.
"""
from __future__ import annotations

import argparse
import sys

from utils.cli import Parser
from utils.errors import cli_entry

EXAMPLES = (
    "python test.py --model-path output/agw_sysumm/last.pth DATA.ROOT /data/SYSU-MM01",
    "python test.py --model-path output/agw_sysumm/last.pth --mode indoor --shots 10 "
    "--gallery official",
    "python test.py --model-path 'output/agw_regdb/trial_{trial}/last.pth' --trial all",
    "python test.py --model-path m.pth --output results.json --save-features f.npz "
    "--visualize pics/",
    "python test.py --model-path output/agw_sysumm/last.pth DATA.DATASET_NAME llcm "
    "DATA.ROOT /data/LLCM",
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``test.py``."""
    p = Parser(
        prog="test.py", examples=EXAMPLES,
        description="Test a checkpoint with its dataset's protocol (SYSU-MM01: all/indoor "
                    "search x single/multi-shot over 10 galleries; RegDB: both directions; "
                    "LLCM: both directions over 10 galleries). Prints one table per setting.",
        notes="Overrides are KEY VALUE pairs, e.g. DATA.ROOT /data/SYSU-MM01 TEST.FLIP yes. "
               "The checkpoint's saved config is used unless --config is given; MODEL keys "
               "must match the checkpoint either way.")
    p.add_argument("--model-path", required=True,
                   help="checkpoint file; may contain {trial} (RegDB, with --trial)")
    p.add_argument("--config", default=None,
                   help=".ini file replacing the checkpoint's saved config (same MODEL keys)")
    p.add_argument("--trial", default=None, metavar="N|all",
                   help="RegDB: the split (default DATA.TRIAL), all = 10 per-trial models; "
                        "SYSU-MM01/LLCM: one gallery trial (default all TEST.NUM_TRIALS)")
    # The protocol options of every registered dataset (SYSU-MM01: --mode, --shots,
    # --gallery): each dataset declares its own.
    from data import DATASETS

    for option in {o.name: o for cls in DATASETS.values() for o in cls.options}.values():
        p.add_argument(f"--{option.name}", type=option.type, choices=option.choices,
                       default=None, help=option.help)
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    p.add_argument("--save-features", default=None,
                   help="write the features, ids, cameras and paths (.npz) here")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default MODEL.DEVICE)")
    p.add_argument("--visualize", default=None, metavar="DIR",
                   help="write cmc.png and a ranked-results sheet per setting into DIR")
    p.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="configuration overrides")
    return p


@cli_entry
def main() -> None:
    """Entry point."""
    args = build_parser().parse_intermixed_args(sys.argv[1:])
    # Imported after parsing so that --help and option errors answer at once.
    from data import DATASETS
    from engine.tester import TestOptions, run_test

    protocol = {o.name: getattr(args, o.name) for cls in DATASETS.values() for o in cls.options}
    run_test(TestOptions(model_path=args.model_path, config=args.config, trial=args.trial,
                         protocol=protocol, output=args.output, save_features=args.save_features,
                         device=args.device, visualize=args.visualize,
                         overrides=list(args.overrides)))


if __name__ == "__main__":
    main()
