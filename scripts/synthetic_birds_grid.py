"""The README's picture of the synthetic birds: one row per class, `--per-class` test images each.

    python scripts/synthetic_birds_grid.py docs/synthetic-birds.png
"""

from __future__ import annotations

import argparse

from viscoin.data import DataConfig, build_dataset
from viscoin.interpret.plot import Cell, Row, image_rgb, labelled_grid, save_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=6)
    args = parser.parse_args()
    test = build_dataset(DataConfig(kind="synthetic", resolution=64), "test", augment=False)
    rows = []
    for c, name in enumerate(test.classes):
        idx = [i for i, (_, y) in enumerate(test.samples) if y == c][: args.per_class]
        rows.append(Row(name.replace("_", ", ").replace("-", " "), [Cell(image_rgb(test[i]["image"])) for i in idx]))
    save_figure(args.out, labelled_grid(rows, title="The synthetic birds: one row per class (test images)", cell=96))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
