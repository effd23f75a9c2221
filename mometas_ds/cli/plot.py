"""``mometas-plot RUN_DIR``: the PNG figures of a pre-training run (mometas_ds.plot) into RUN_DIR/plots/."""
from __future__ import annotations

import argparse
import logging

from mometas_ds.plot import plot_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mometas-plot", description="PNG figures of what a pre-training run did and what its sampler learned")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a pre-training run's --output_dir")
    parser.add_argument("--out", metavar="DIR", default=None, help="where to write the PNGs (default RUN_DIR/plots)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="mometas-plot: %(message)s")
    try:
        paths = plot_run(args.run_dir, args.out)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
