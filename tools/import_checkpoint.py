"""Import a released AGW, CAJ, DEEN or MSCMNet model as a checkpoint of this project.

    python tools/import_checkpoint.py --from agw|caj|deen|mscmnet SRC --config CONFIG --out DST.pth
        [KEY VALUE ...]

SRC is the authors' file ({'net': state_dict, 'mAP', 'cmc', 'epoch', ...}, or a
bare state dict); CONFIG one building their network (configs/agw/*.ini,
caj/*.ini, deen/*.ini, mscmnet/*.ini). DST works with test.py, and as
MODEL.PRETRAIN_PATH to fine-tune the whole network.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import Parser  # noqa: E402
from utils.errors import cli_entry  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/import_checkpoint.py``."""
    p = Parser(
        prog="tools/import_checkpoint.py",
        examples=[
            "python tools/import_checkpoint.py --from agw agw_sysu.t --config "
            "configs/agw/sysumm.ini --out output/published/agw_sysumm.pth",
            "python tools/import_checkpoint.py --from deen regdb_deen_trial_3_best.t --config "
            "configs/deen/regdb.ini --out output/published/deen_regdb_trial_3.pth DATA.TRIAL 3",
            "python tools/import_checkpoint.py --from mscmnet "
            "sysu_mscm_p4_n6_lr_0.1_seed_0_best.t --config configs/mscmnet/sysumm.ini "
            "--out output/published/mscmnet_sysumm.pth",
        ],
        description="Convert a released AGW / CAJ / DEEN / MSCMNet checkpoint into this "
                    "project's "
                    "checkpoint format (for test.py and MODEL.PRETRAIN_PATH).",
        notes="Overrides are KEY VALUE pairs applied to --config, e.g. DATA.TRIAL 3.")
    p.add_argument("--from", dest="source", required=True,
                   choices=("agw", "caj", "deen", "mscmnet"),
                   help="whose code wrote SRC (AGW and CAJ share one network; the test-time "
                        "feature differs)")
    p.add_argument("src", metavar="SRC", help="the released file")
    p.add_argument("--config", required=True, help=".ini building the published network")
    p.add_argument("--out", required=True, metavar="DST", help="checkpoint to write")
    p.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="configuration overrides")
    return p


@cli_entry
def main() -> None:
    """Entry point."""
    args = build_parser().parse_intermixed_args(sys.argv[1:])
    from modeling.importer import import_checkpoint

    report = import_checkpoint(args.source, args.src, args.config, args.out,
                               list(args.overrides))
    print("\n".join(report.lines()))


if __name__ == "__main__":
    main()
