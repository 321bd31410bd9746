"""The benchmark subcommands of `python -m medclip_nb` (bench, bench-step, bench-train, bench-scale,
bench-ablation): their flags and handlers, which load the benchmarks (tools/) only when one runs, so
`--help` loads no torch. cli.py registers them with `add_bench_parsers`."""

from __future__ import annotations

import argparse
from typing import Callable

from medclip_nb.config_load import add_config_arguments, at_least_one, config_from_args, load_config
from medclip_nb.paths import from_cwd


def _bench(args) -> int:
    cfg = config_from_args(args)
    from medclip_nb.tools import BenchOptions, run_bench

    run_bench(cfg, BenchOptions(phantom=args.phantom, phantom_size=args.phantom_height, steps=args.steps,
                                skip=tuple(filter(None, map(str.strip, args.skip.split(",")))),
                                json_path=args.json, prepare_only=args.prepare_only))
    return 0


def _bench_step(args) -> int:
    from medclip_nb.tools import run_step_bench

    study = load_config(args.study or "params/debug.yaml")
    run_step_bench(config_from_args(args), study, steps=args.steps, rounds=args.rounds)
    return 0


def _bench_train(args) -> int:
    cfg = config_from_args(args)
    from medclip_nb.tools import main_bench_train

    main_bench_train(cfg, args.config or "the defaults", args.settings, args.steps, args.untimed, args.rounds)
    return 0


def _bench_scale(args) -> int:
    from medclip_nb.tools import main_scale

    main_scale(args.sizes, args.root, store_size=args.store_size, num_workers=args.num_workers,
               compare_old=not args.no_compare, keep=args.keep, out_json=args.json)
    return 0


def _bench_ablation(args) -> int:
    cfg = config_from_args(args)
    from medclip_nb.tools import main_bench_ablation

    main_bench_ablation(cfg, args.workers, args.rounds)
    return 0


def _counts(text: str, smallest: int, example: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < smallest:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts such as {example}")
    return values


def workers_list(text: str) -> list[int]:
    """--workers: comma-separated loader process counts, each 0 or more."""
    return _counts(text, 0, "0,2")


def sizes_list(text: str) -> list[int]:
    """--sizes: comma-separated study counts, each 1 or more."""
    return _counts(text, 1, "5000,60000")


def _subcommand(sub, name: str, help_text: str, func: Callable, config: bool = True) -> argparse.ArgumentParser:
    """One benchmark subcommand: its parser, the config flags (YAML + every key) where it trains or
    scores a model, and its handler."""
    p = sub.add_parser(name, help=help_text)
    if config:
        add_config_arguments(p)
    p.set_defaults(func=func)
    return p


def add_bench_parsers(sub) -> None:
    """Register bench, bench-step, bench-train, bench-scale and bench-ablation on the CLI's subparsers."""
    p = _subcommand(sub, "bench", "throughput benchmark: model-only vs end-to-end from the store and from JPEGs",
                    _bench)
    p.add_argument("--phantom", type=int, default=None,
                   help="build a phantom of N studies at full MIMIC-CXR size for the raw-JPEG path")
    p.add_argument("--phantom-height", "--phantom_height", dest="phantom_height", type=int, default=3056,
                   help="--phantom's image height in pixels (default: 3056, full MIMIC-CXR size)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default: 20)")
    p.add_argument("--skip", default="", help="measurements to leave out, comma-separated (see benchmarks/README.md)")
    p.add_argument("--json", default=None, metavar="FILE", type=from_cwd,
                   help="write the results here (default: benchmarks/results-<device>-<date>[-compiled].json)")
    p.add_argument("--prepare-only", "--prepare_only", dest="prepare_only", action="store_true",
                   help="with --phantom: build the phantom, its dataset and image store, then stop")

    p = _subcommand(sub, "bench-step", "our training step against open_clip's and the GEMM rate (make bench)",
                    _bench_step)
    p.add_argument("--study", default=None, type=from_cwd,
                   help="config of the study model, timed on all cores and with each earlier choice put back "
                        "(default: params/debug.yaml)")
    p.add_argument("--steps", type=at_least_one, default=3, help="steps per row and round (default: 3)")
    p.add_argument("--rounds", type=at_least_one, default=4, help="interleaved rounds (default: 4)")

    p = _subcommand(sub, "bench-train", "training pairs/s under several settings (old, threads, new), side by "
                                        "side in one run (make bench-train)", _bench_train)
    p.add_argument("--settings", default="old;new",
                   help="settings separated by ';', each old, threads or new, optionally with config keys: "
                        "'new:num_workers=1' (default: old;new)")
    p.add_argument("--steps", type=at_least_one, default=30, help="steps per run (default: 30)")
    p.add_argument("--untimed", type=int, default=6, help="first steps of a run left out of its pairs/s (default: 6)")
    p.add_argument("--rounds", type=at_least_one, default=3, help="interleaved rounds (default: 3)")

    p = _subcommand(sub, "bench-scale", "time every data step on synthetic MIMIC-CXR-size trees "
                                        "(benchmarks/README.md)", _bench_scale, config=False)
    p.add_argument("--sizes", type=sizes_list, default=[5000, 60000, 227827],
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

    p = _subcommand(sub, "bench-ablation", "time one run of each kind in make ablation's plan (train + scoring), "
                                           "side by side, and what the plan's runs come to", _bench_ablation)
    p.add_argument("--workers", type=workers_list, default=[0],
                   help="num_workers settings to compare, comma-separated (default: 0)")
    p.add_argument("--rounds", type=at_least_one, default=2,
                   help="interleaved rounds; medians are printed (default: 2)")
