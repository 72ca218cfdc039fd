"""Search a gallery of images for each query image with a trained model.

    python tools/search.py --model_path M --query Q [Q ...] --gallery G [G ...]
        [--query-modality visible|infrared] [--gallery-modality visible|infrared]
        [--top 10] [--out DIR] [--device cpu|cuda|auto]

Q and G are image files, folders (searched recursively) or glob patterns. Each
side goes through the stream of its modality; the features, distance and
normalisation are the checkpoint's TEST settings. Prints the top k per query
and writes a ranked sheet per query and ranking.json to --out; the gallery's
features are cached in --out/gallery_cache/ for the next search.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.deploy import (  # noqa: E402
    collect_images,
    format_ranking,
    load_trained,
    modality_id,
    search,
)
from utils.cli import Parser  # noqa: E402
from utils.errors import cli_entry  # noqa: E402

EXAMPLES = [
    "python tools/search.py --model-path output/agw_regdb/trial_1/last.pth --query probe.jpg "
    "--query-modality visible --gallery 'crops/ir/**/*.png' --gallery-modality infrared "
    "--top 10 --out output/search",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/search.py``."""
    p = Parser(prog="tools/search.py", description=__doc__.splitlines()[0], examples=EXAMPLES)
    p.add_argument("--model-path", required=True,
                   help="a checkpoint of this project (.pth)")
    p.add_argument("--query", nargs="+", required=True, help="query images, folders or globs")
    p.add_argument("--gallery", nargs="+", required=True,
                   help="gallery images, folders or globs")
    p.add_argument("--query-modality", default="visible",
                   help="visible or infrared (default visible)")
    p.add_argument("--gallery-modality", default="infrared",
                   help="visible or infrared (default infrared)")
    p.add_argument("--top", type=int, default=10, help="gallery images listed per query")
    p.add_argument("--out", default="output/search",
                   help="folder for the sheets, ranking.json and the gallery cache")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: MODEL.DEVICE)")
    return p


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    q_mod = modality_id(args.query_modality, "--query-modality")
    g_mod = modality_id(args.gallery_modality, "--gallery-modality")
    queries = collect_images(args.query, "--query", exclude=args.out)
    gallery = collect_images(args.gallery, "--gallery", exclude=args.out)
    trained = load_trained(args.model_path, args.device)
    result = search(trained, queries, gallery, q_mod, g_mod, args.out, args.top)
    print(format_ranking(result.ranking))
    source = "read from the cache" if result.from_cache else "extracted and cached"
    print(f"{len(gallery)} gallery features {source}; {len(result.sheets)} ranked sheets and "
          f"ranking.json written to {args.out}")
    return 0


if __name__ == "__main__":
    main()
