"""The benchmark subcommands of `python -m medclip_nb` (bench, bench-ablation, bench-scale): their
flags and what they run (tools/). cli.py adds them to its parser."""

from __future__ import annotations

import argparse

from medclip_nb.config_load import add_config_arguments, config_from_args
from medclip_nb.paths import from_cwd


def _bench(args) -> int:
    cfg = config_from_args(args)
    from medclip_nb.tools import run_bench

    run_bench(cfg, phantom=args.phantom, steps=args.steps)
    return 0


def _bench_ablation(args) -> int:
    cfg = config_from_args(args)
    from medclip_nb.tools import main_bench_ablation

    main_bench_ablation(cfg, args.workers, args.rounds)
    return 0


def _workers_list(text: str) -> list[int]:
    """--workers: comma-separated loader process counts, each 0 or more."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts such as 0,2")
    return values


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _bench_scale(args) -> int:
    from medclip_nb.tools import main_scale

    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    main_scale(sizes, args.root, store_size=args.store_size, num_workers=args.num_workers,
               compare_old=not args.no_compare, keep=args.keep, out_json=args.json)
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="throughput benchmark: model-only vs end-to-end from the store and from JPEGs")
    add_config_arguments(p)
    p.add_argument("--phantom", type=int, default=None,
                   help="build a phantom of N studies at full MIMIC-CXR size for the raw-JPEG path")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default: 20)")
    p.set_defaults(func=_bench)


def add_bench_ablation(sub) -> None:
    p = sub.add_parser("bench-ablation", help="time one run of each kind in make ablation's plan (train + scoring), "
                                              "side by side, and what the plan's runs come to")
    add_config_arguments(p)
    p.add_argument("--workers", type=_workers_list, default=[0],
                   help="num_workers settings to compare, comma-separated (default: 0)")
    p.add_argument("--rounds", type=at_least_one, default=2,
                   help="interleaved rounds; medians are printed (default: 2)")
    p.set_defaults(func=_bench_ablation)


def add_bench_scale(sub) -> None:
    p = sub.add_parser("bench-scale", help="time every data step on synthetic MIMIC-CXR-size trees "
                                           "(benchmarks/README.md)")
    p.add_argument("--sizes", default="5000,60000,227827",
                   help="studies per tree, comma-separated (full MIMIC: 227827)")
    p.add_argument("--root", default="/tmp/medclip_scale", type=from_cwd,
                   help="folder for the trees (removed afterwards unless --keep)")
    p.add_argument("--store-size", "--store_size", dest="store_size", type=int, default=16,
                   help="image store side in pixels (default: 16; the images are tiny)")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=2,
                   help="loader and import worker processes (default: 2)")
    p.add_argument("--no-compare", action="store_true", help="skip the second epoch with the old list-of-dicts records")
    p.add_argument("--keep", action="store_true", help="keep the trees")
    p.add_argument("--json", default=None, type=from_cwd, help="also write the figures to this JSON file")
    p.set_defaults(func=_bench_scale)
