"""`python -m medclip_nb SUBCOMMAND`: phantom, prepare, prepare-iu, prepare-chexpert, data, convert, cache, train,
evaluate, bench, bench-scale, bench-ablation, bench-step, bench-train, summary, paper, predict, retrieve, embed, export.

Errors that come from the user's input (a missing file, a bad key, a malformed dataset) end
the command with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Mapping

from medclip_nb.cli_bench import add_bench_parsers
from medclip_nb.config import CONFIG_KEYS, did_you_mean
from medclip_nb.config_load import add_config_arguments, at_least_one, config_from_args
from medclip_nb.errors import UserError, one_line
from medclip_nb.paths import from_cwd, shown

# A store row is size x size bytes: 100000 would ask for a 580 GB memory map.
STORE_SIZES = range(8, 4097)


def _phantom(args) -> int:
    from medclip_nb.phantom import generate_chexpert_phantom, generate_phantom

    if args.layout == "chexpert":
        if args.test_studies:
            raise UserError("--test-studies: the chexpert layout has no test cohort (CheXpert's valid.csv is the "
                            "plan's validation studies); leave it out")
        generate_chexpert_phantom(args.out, studies=args.studies, size=args.size, seed=args.seed, force=args.force)
        return 0
    summary = generate_phantom(args.out, studies=args.studies, size=args.size, seed=args.seed,
                               test_studies=args.test_studies, force=args.force)
    print(f"phantom MIMIC-CXR-JPG written to {args.out}: {summary['studies']} studies, "
          f"{summary['images']} images, {summary['subjects']} patients")
    return 0


def _prepare_chexpert(args) -> int:
    from medclip_nb.data import prepare_chexpert

    prepare_chexpert(args.chexpert_root, args.out, per_class=args.per_class, num_workers=args.num_workers)
    return 0


def _prepare(args) -> int:
    from medclip_nb.data import prepare_mimic

    if args.store_size is not None and args.store_size not in STORE_SIZES:
        raise UserError(f"--store-size: {args.store_size} is not in {STORE_SIZES.start}..{STORE_SIZES.stop - 1}")

    prepare_mimic(
        args.mimic_root, args.out,
        frontal_views=tuple(v.strip() for v in args.views.split(",") if v.strip()),
        store_size=args.store_size, num_workers=args.num_workers, unpaired_fraction=args.unpaired_fraction,
        labels=args.labels,
    )
    return 0


def _prepare_iu(args) -> int:
    from medclip_nb.data import prepare_iu

    prepare_iu(args.out, args.reports, args.images, size=args.size, seed=args.seed, workers=args.num_workers)
    return 0


def _data(args) -> int:
    from medclip_nb.data import append_phase_times, ensure_dataset

    times: dict[str, float] = {}
    path = ensure_dataset(config_from_args(args), times=times)
    print(f"dataset ready: {shown(path)}")
    if args.phase_times:  # make study: summary.md's "Where the time went"
        append_phase_times(args.phase_times, times)
    return 0


def _convert(args) -> int:
    from medclip_nb.data import convert_to_jsonl

    convert_to_jsonl(args.data_path, args.out)
    return 0


def _cache(args) -> int:
    from medclip_nb.data import ImageStore, build_store

    if args.size not in STORE_SIZES:
        raise UserError(f"--size: {args.size} is not in {STORE_SIZES.start}..{STORE_SIZES.stop - 1}")
    folder = build_store(args.data_path, args.out, size=args.size, num_workers=args.num_workers, rebuild=args.rebuild)
    if args.verify:
        ImageStore.open(folder, expected_source=args.data_path, expected_size=args.size).verify()
        print(f"image store {shown(folder)}: every row matches its recorded hash")
    return 0


def _train(args) -> int:
    cfg = config_from_args(args)  # bad keys fail before the heavy imports
    from medclip_nb.train import train

    args.work.get("train", train)(cfg)
    return 0


def _evaluate(args) -> int:
    from medclip_nb.evaluate import check_evaluation_outputs, evaluate_checkpoint

    overrides = _overrides(args)
    if "data_path" not in overrides:  # a checkpoint's own data_path is a path a model file names: never read
        raise UserError("evaluate: --data_path is required (the dataset file to evaluate on)")
    check_evaluation_outputs(args.out)
    args.work.get("evaluate", evaluate_checkpoint)(args.checkpoint, out_dir=args.out, overrides=overrides)
    return 0


def _overrides(args) -> dict:
    """The config-key flags the user typed (the others are absent from `args`)."""
    return {k: getattr(args, k) for k in CONFIG_KEYS if hasattr(args, k)}


def _predict(args) -> int:
    from medclip_nb.inference import predict_command

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    predict_command(args.checkpoint, args.paths, classes=classes, prompts_file=args.prompts, mode=args.mode,
                    csv=args.csv, multi_label=args.multi_label, heatmap=args.heatmap,
                    heatmap_method=args.heatmap_method, force=args.force_output, overrides=_overrides(args))
    return 0


def _retrieve(args) -> int:
    from medclip_nb.inference import retrieve_command

    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    retrieve_command(args.checkpoint, args.paths, args.reports, k=args.k, splits=splits, csv=args.csv,
                     overrides=_overrides(args), force=args.force_output)
    return 0


def _embed(args) -> int:
    from medclip_nb.inference import embed_command

    overrides = _overrides(args)
    if "data_path" not in overrides:
        raise UserError("embed: --data_path is required (the dataset file to embed)")
    data_path = overrides.pop("data_path")
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    embed_command(args.checkpoint, data_path, args.out, splits=splits, overrides=overrides, force=args.force_output)
    return 0


def _export(args) -> int:
    from medclip_nb.inference import export_command

    export_command(args.checkpoint, args.out, metrics_file=args.metrics, metrics_key=args.metrics_key,
                   force=args.force_output)
    return 0


def _paper(args) -> int:
    cfg = config_from_args(args)
    from medclip_nb.study import run_paper

    run_paper(cfg)
    return 0


def _summary(args) -> int:
    from medclip_nb.config_load import load_config
    from medclip_nb.study import write_summary

    reports = load_config(args.config).path("reports_dir") if args.config else None
    metrics = args.metrics or (reports / "metrics.json" if reports else from_cwd("reports/metrics.json"))
    out = args.out or (reports / "summary.md" if reports else from_cwd("reports/summary.md"))
    path = write_summary(metrics, out, wall_seconds=args.wall_seconds, params=args.params or args.config,
                         phase_times=args.phase_times, force=args.force_output)
    print(f"summary written: {shown(path)}")
    if reports:
        print(f"  numbers: {shown(reports / 'metrics.json')}, figures: {shown(reports / 'figures')}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medclip_nb",
        description="MedCLIP-style image-report pretraining on MIMIC-CXR (or its phantom).",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    parser.set_defaults(subcommands=sub.choices)
    return parser


def unknown_flag_message(args: argparse.Namespace, extra: list[str]) -> str:
    """The one line for arguments no flag of the subcommand takes, with the closest flag."""
    flag = next((a for a in extra if a.startswith("-")), extra[0]).split("=", 1)[0]
    if not flag.startswith("-"):
        return f"{args.command}: unexpected argument {flag!r}"
    options = [o for action in args.subcommands[args.command]._actions for o in action.option_strings]
    return f"{args.command}: unknown flag {flag!r}{did_you_mean(flag, options, prefix='--')}"


def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write a deterministic phantom MIMIC-CXR-JPG dataset")
    p.add_argument("--out", required=True, type=from_cwd, help="output folder (the MIMIC-CXR-JPG root)")
    p.add_argument("--studies", type=int, default=300, help="number of studies (default: 300)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (default: 0)")
    p.add_argument("--test-studies", "--test_studies", dest="test_studies", type=int, default=0,
                   help="extra test-only studies of new patients, for large evaluation sets (default: 0)")
    p.add_argument("--force", action="store_true",
                   help="replace a phantom of other parameters in --out (and the datasets prepared from it)")
    p.add_argument("--layout", choices=["mimic", "chexpert"], default="mimic",
                   help="mimic: MIMIC-CXR-JPG (default); chexpert: a CheXpert-v1.0-small tree (train.csv, valid.csv; "
                        "for prepare-chexpert)")
    p.set_defaults(func=_phantom)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="import a MIMIC-CXR-JPG tree into datasets.pkl")
    p.add_argument("--mimic-root", "--mimic_root", dest="mimic_root", required=True, type=from_cwd,
                   help="MIMIC-CXR-JPG root: files/ and the mimic-cxr-2.0.0-*.csv.gz tables")
    p.add_argument("--out", required=True, type=from_cwd, help="output folder for datasets.pkl and prepare_report.json")
    p.add_argument("--views", default="PA,AP", help="ViewPosition values kept (default: PA,AP)")
    p.add_argument("--labels", choices=["chexpert", "negbio"], default="chexpert",
                   help="label table: mimic-cxr-2.0.0-chexpert.csv.gz (default) or -negbio.csv.gz (MedCLIP's)")
    p.add_argument("--store-size", "--store_size", dest="store_size", type=int, default=None,
                   help="also build the uint8 image store at this size (e.g. 256)")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=None,
                   help="decoding processes (default: all cores)")
    p.add_argument("--unpaired-fraction", "--unpaired_fraction", dest="unpaired_fraction", type=float, default=0.0,
                   help="move this fraction of train studies (whole patients, seeded) into the unpaired "
                        "splits train_images / train_texts (default: 0)")
    p.set_defaults(func=_prepare)


def _add_prepare_iu(sub) -> None:
    p = sub.add_parser("prepare-iu", help="import the Open-i (Indiana University) chest X-ray reports into "
                                          "datasets.pkl (docs/datasets.md)")
    p.add_argument("--out", required=True, help="output folder for datasets.pkl, prepare_report.json and the images")
    p.add_argument("--reports", default=None,
                   help="XML folder, NLMCXR_reports.tgz or a torchxrayvision wheel (default: the installed "
                        "torchxrayvision's copy; pip install -e '.[iu]')")
    p.add_argument("--images", default=None,
                   help="folder of the Open-i PNGs (<image id>.png), or 'phantom': one phantom radiograph per report "
                        "drawn from its MeSH codes (required)")
    p.add_argument("--size", type=int, default=256, help="phantom image height in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the phantom images (default: 0)")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=None,
                   help="processes drawing phantom images (default: all cores)")
    p.set_defaults(func=_prepare_iu)


def _add_prepare_chexpert(sub) -> None:
    p = sub.add_parser("prepare-chexpert", help="import CheXpert (train.csv, valid.csv, images) as MedCLIP uses it: "
                                                "image-only records and MedCLIP's CheXpert-5x200")
    p.add_argument("--chexpert-root", "--chexpert_root", dest="chexpert_root", required=True, type=from_cwd,
                   help="the folder holding train.csv (CheXpert-v1.0 or CheXpert-v1.0-small)")
    p.add_argument("--out", required=True, type=from_cwd,
                   help="output folder for datasets.pkl and prepare_report.json")
    p.add_argument("--per-class", "--per_class", dest="per_class", type=int, default=200,
                   help="the 5x200's 200: MedCLIP draws twice this per class, then keeps half (default: 200)")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=None,
                   help="image-checking processes (default: all cores for large tables)")
    p.set_defaults(func=_prepare_chexpert)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="make the config's dataset ready: generate the phantom and/or prepare it, build "
                                    "the store")
    add_config_arguments(p, keys=("data_path", "mimic_root", "iu_reports", "iu_images", "frontal_views", "mimic_labels",
                                  "phantom_dir", "phantom_studies", "phantom_size", "phantom_seed",
                                  "phantom_test_studies", "image_store", "resize_size", "force"))
    p.add_argument("--phase-times", "--phase_times", dest="phase_times", default=None, metavar="FILE", type=from_cwd,
                   help="append 'phase<TAB>seconds' lines (phantom, prepare, image store) to FILE (make study)")
    p.set_defaults(func=_data)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="write a dataset pickle once as a JSON Lines manifest (safe and fast to load)")
    p.add_argument("--data_path", "--data-path", dest="data_path", required=True, type=from_cwd,
                   help="datasets.pkl to convert")
    p.add_argument("--out", default=None, type=from_cwd,
                   help="manifest to write (default: the pickle's name with .jsonl); never replaced")
    p.set_defaults(func=_convert)


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="decode every image of a dataset once into a uint8 store")
    p.add_argument("--data_path", "--data-path", dest="data_path", required=True, type=from_cwd,
                   help="datasets.pkl or manifest")
    p.add_argument("--out", default=None, type=from_cwd,
                   help="store folder (default: image_store_<size>/ beside the dataset file)")
    p.add_argument("--size", type=int, default=256, help="stored image side (default: 256)")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=None,
                   help="decoding processes (default: all cores)")
    p.add_argument("--rebuild", action="store_true",
                   help="decode every image again into a new build, even over a store that fails its integrity checks")
    p.add_argument("--verify", action="store_true", help="afterwards, hash every stored row (opening checks a sample)")
    p.set_defaults(func=_cache)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="pretrain (the seed script's flags, plus every config key)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(p)
    p.set_defaults(func=_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="zero-shot, retrieval and linear-probe evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True, type=from_cwd, help="checkpoint file (best.pth, last.pth, ...)")
    p.add_argument("--out", default="reports", type=from_cwd,
                   help="folder for metrics.json and figures (default: reports)")
    add_config_arguments(p, keys=("data_path", "image_root", "image_store", "eval_batch_size",
                                  "zeroshot_per_class", "zeroshot_protocols", "zeroshot_prompts_n",
                                  "zeroshot_prompt_draws", "localisation_images", "localisation_maps",
                                  "localisation_boxes", "num_workers", "gpu_id", "seed"))
    p.set_defaults(func=_evaluate)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="zero-shot classify images or folders of images with a checkpoint or export")
    p.add_argument("--checkpoint", required=True, type=from_cwd,
                   help="checkpoint file (best.pth, ...) or export folder")
    p.add_argument("paths", nargs="+", metavar="PATH", type=from_cwd,
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--multi-label", "--multi_label", dest="multi_label", action="store_true",
                   help="each finding on its own: softmax over its positive and negative prompt, as evaluate's "
                        "per-label zero-shot (default: one softmax over the classes)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names (default: the prompts file's classes, else the five "
                        "CheXpert competition classes; with --multi-label the 14 CheXpert labels)")
    p.add_argument("--prompts", default=None, metavar="FILE", type=from_cwd,
                   help="YAML/JSON file mapping class names to lists of prompts (default: MedCLIP's vocabulary); "
                        "with --multi-label each finding to {positive: [...], negative: [...]}")
    p.add_argument("--mode", default="mean", choices=["mean", "max"],
                   help="prompt ensemble: mean embedding or best prompt (default: mean)")
    p.add_argument("--csv", default=None, metavar="FILE", type=from_cwd, help="also write the table as CSV")
    p.add_argument("--heatmap", default=None, metavar="DIR", type=from_cwd,
                   help="also write one PNG per image into DIR: the map of each class's text over the model's input "
                        "(docs/localisation.md)")
    p.add_argument("--heatmap-method", "--heatmap_method", dest="heatmap_method", default="similarity",
                   choices=["similarity", "gradcam"],
                   help="with --heatmap: the image-text similarity of each location, or Grad-CAM of the similarity")
    p.add_argument("--force", dest="force_output", action="store_true",
                   help="let --csv replace an existing file and --heatmap replace overlay files in DIR")
    add_config_arguments(p, keys=("eval_batch_size", "num_workers", "gpu_id", "on_bad_image"))
    p.set_defaults(func=_predict)


def _add_retrieve(sub) -> None:
    p = sub.add_parser("retrieve", help="the nearest reports of a report bank for images, with a checkpoint or export")
    p.add_argument("--checkpoint", required=True, type=from_cwd,
                   help="checkpoint file (best.pth, ...) or export folder")
    p.add_argument("paths", nargs="+", metavar="PATH", type=from_cwd,
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--reports", required=True, metavar="FILE", type=from_cwd,
                   help="the report bank: a dataset file (.pkl, .jsonl, .csv) or a text file, one report per line")
    p.add_argument("--splits", default=None,
                   help="comma-separated splits of a dataset file to search (default: train,val,test)")
    p.add_argument("-k", type=at_least_one, default=5, help="reports per image (default: 5)")
    p.add_argument("--csv", default=None, metavar="FILE", type=from_cwd,
                   help="also write the table (whole reports) as CSV")
    p.add_argument("--force", dest="force_output", action="store_true", help="let --csv replace an existing file")
    add_config_arguments(p, keys=("eval_batch_size", "num_workers", "gpu_id", "on_bad_image"))
    p.set_defaults(func=_retrieve)


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="image and report embeddings of a dataset file, with their ids, to .npz")
    p.add_argument("--checkpoint", required=True, type=from_cwd,
                   help="checkpoint file (best.pth, ...) or export folder")
    p.add_argument("--out", required=True, metavar="FILE", type=from_cwd, help="output .npz file")
    p.add_argument("--force", dest="force_output", action="store_true", help="let --out replace an existing file")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits (default: train,val,test)")
    add_config_arguments(p, keys=("data_path", "image_root", "image_store", "eval_batch_size", "num_workers",
                                  "gpu_id", "on_bad_image"))
    p.set_defaults(func=_embed)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a model folder others can load: safetensors weights, config, tokenizer, "
                                      "preprocessing config and a model card (docs/using-a-model.md)")
    p.add_argument("--checkpoint", required=True, type=from_cwd, help="checkpoint file (best.pth, last.pth, ...)")
    p.add_argument("--out", required=True, metavar="DIR", type=from_cwd,
                   help="output folder (new or empty, or an earlier export)")
    p.add_argument("--force", dest="force_output", action="store_true", help="--out may be a user's folder")
    p.add_argument("--metrics", default=None, metavar="FILE", type=from_cwd,
                   help="a metrics.json whose entry goes into the model card, with its intervals")
    p.add_argument("--metrics-key", "--metrics_key", dest="metrics_key", default=None, metavar="KEY",
                   help="the entry of --metrics (default: the checkpoint's key, '<run folder>/<file stem>')")
    p.set_defaults(func=_export)


def _add_paper(sub) -> None:
    p = sub.add_parser("paper", help="MedCLIP's protocol on CheXpert-5x200 and MIMIC-5x200 (yours or the phantom's), "
                                     "our numbers beside the paper's (make paper)")
    add_config_arguments(p)
    p.set_defaults(func=_paper)


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="write the results tables of metrics.json as summary.md (make study does)")
    p.add_argument("--config", default=None, type=from_cwd,
                   help="the parameter file the study ran with: metrics.json and summary.md in its reports_dir")
    p.add_argument("--metrics", default=None, type=from_cwd,
                   help="metrics.json (default: <reports_dir>/metrics.json with --config, else reports/metrics.json)")
    p.add_argument("--out", default=None, type=from_cwd,
                   help="output file (default: <reports_dir>/summary.md with --config, else reports/summary.md)")
    p.add_argument("--force", dest="force_output", action="store_true", help="--out may replace a user's file")
    p.add_argument("--wall-seconds", "--wall_seconds", dest="wall_seconds", type=float, default=None,
                   help="the study's wall time, shown in the summary")
    p.add_argument("--params", default=None, help="how the study ran, shown in the summary (default: --config)")
    p.add_argument("--phase-times", "--phase_times", dest="phase_times", default=None, metavar="FILE", type=from_cwd,
                   help="'phase<TAB>seconds' lines (make study writes reports/phase_times.tsv), shown as a table")
    p.set_defaults(func=_summary)


# In the order `--help` lists them.
_SUBCOMMANDS = (
    _add_phantom,
    _add_prepare,
    _add_prepare_iu,
    _add_prepare_chexpert,
    _add_data,
    _add_convert,
    _add_cache,
    _add_train,
    _add_evaluate,
    _add_predict,
    _add_retrieve,
    _add_embed,
    _add_export,
    add_bench_parsers,  # cli_bench.py
    _add_summary,
    _add_paper,
)


def main(argv: list[str] | None = None, *, work: Mapping[str, Callable] | None = None) -> int:
    """Run one subcommand; 0 on success, 2 with one `error:` line for bad input.

    `work` replaces what a subcommand runs once its flags and inputs are read: `{"train": f}`
    calls f(cfg) instead of training, `{"evaluate": f}` calls f(checkpoint, out_dir=,
    overrides=) instead of evaluate_checkpoint (the fuzzer's stubs; tools/fuzz.py)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        print(f"error: {unknown_flag_message(args, extra)}", file=sys.stderr)
        return 2
    args.work = dict(work or {})
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {one_line(e, 1000)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (an input asks for more than this machine has; see the limits in docs/failures.md)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
