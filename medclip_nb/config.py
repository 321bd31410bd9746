"""The one config object of the study: the key table.

Every key is a field of `Config` with its default (the seed script's defaults for its flags),
help text, allowed values and check (config_checks.py). Values come, lowest precedence first,
from: the defaults, a YAML file (`params/*.yaml`, also a papermill parameter file), then
command-line flags or notebook parameters (config_load.py). Unknown keys, wrong types and
impossible values are refused before any work starts, with one line naming the key and what is
allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from medclip_nb.config_checks import (
    between,
    device_name,
    fractions,
    non_negative,
    positive,
    retired_key_message,
    step_list,
    validate,
    zeroshot_rules,
)
from medclip_nb.errors import ConfigError, quote
from medclip_nb.paths import resolve


def _opt(default, help: str, choices=None, check=None, items=None, path=False):
    """A key: its default, help, allowed `choices`, `check`, for a list its `items` type, and
    whether it is a `path` (a flag's value is then taken from the current folder, paths.from_cwd)."""
    meta = {"help": help, "choices": choices, "check": check, "items": items, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# Image backbones model/encoders.py builds (checked here, before any work starts): torchvision's, and
# small_cnn (SmallCNN, the CPU default of params/debug.yaml).
VISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "swin_t", "mobilenet_v3_small", "small_cnn")
# Phantom image sides the generator draws (phantom/); checked here so a bad size stops before any work.
PHANTOM_SIZES = (16, 4096)
_MAX_COUNT = 10**12  # steps, epochs, intervals: beyond any real run


@dataclass
class Config:
    # ---- data -----------------------------------------------------------------------------
    data_path: str = _opt(
        "/root/autodl-tmp/mimic_cxr/datasets.pkl",
        "dataset file: datasets.pkl (train/val/test lists of dicts), or a .jsonl/.csv manifest", path=True,
    )
    image_root: str | None = _opt(
        None, "folder that relative image_path values are taken from (default: the dataset file's folder)", path=True
    )
    image_store: str | None = _opt(
        None, "prepared uint8 image store (from `prepare --store`/`cache`); 'auto' uses one beside the dataset file if "
              "present", path=True
    )
    mimic_root: str | None = _opt(None, "MIMIC-CXR-JPG root read by `prepare` (files/, *.csv.gz)", path=True)
    frontal_views: list = _opt(["PA", "AP"], "ViewPosition values kept by `prepare`")
    iu_reports: str | None = _opt(
        None, "Open-i (Indiana University) reports read by `data` / `prepare-iu`: 'installed' (the copy in the "
        "installed torchxrayvision, extra [iu]), an XML folder, NLMCXR_reports.tgz or a torchxrayvision wheel; "
        "null: not Open-i (docs/datasets.md)", path=True,
    )
    iu_images: str | None = _opt(
        None, "Open-i images with iu_reports: a folder of the Open-i PNGs, or 'phantom' (one phantom radiograph per "
        "report drawn from its MeSH codes, phantom_size px, phantom_seed)", path=True,
    )
    mimic_labels: str = _opt(
        "chexpert", "label table `prepare` reads: chexpert (mimic-cxr-2.0.0-chexpert.csv.gz) or negbio "
        "(mimic-cxr-2.0.0-negbio.csv.gz, MedCLIP's process_mimic_cxr.py)", choices=["chexpert", "negbio"],
    )
    chexpert_root: str | None = _opt(None, "CheXpert-v1.0(-small) folder holding train.csv, read by `prepare-chexpert` "
                                           "and `make paper`", path=True)
    chexpert_phantom_dir: str = _opt("data/phantom_chexpert", "`make paper` without chexpert_root: where the phantom "
                                     "CheXpert tree is written", path=True)
    phantom_dir: str = _opt("data/phantom", "where the phantom MIMIC-CXR-JPG tree is written", path=True)
    phantom_studies: int = _opt(300, "number of phantom studies", check=between(1, 1_000_000))
    phantom_size: int = _opt(256, "phantom image side in pixels (MIMIC-CXR is about 2544 x 3056)",
                             check=between(*PHANTOM_SIZES))
    phantom_test_studies: int = _opt(
        0, "extra test-only phantom studies of new patients: evaluation sets big enough for intervals",
        check=between(0, 1_000_000)
    )
    phantom_seed: int = _opt(0, "phantom generator seed (same seed, same bytes)", check=between(0, 2**32 - 1))
    force: bool = _opt(False, "data/phantom: replace a phantom of other parameters (and the datasets prepared from "
                       "it); train: start fresh over checkpoints that resume_from 'latest' could not read")
    image_size: int = _opt(224, "training crop size in pixels", check=between(1, 4096))
    resize_size: int = _opt(256, "size images are resized to before cropping", check=between(1, 4096))
    augment: str = _opt("seed", "augmentation preset", choices=["seed", "medclip", "none"])
    on_bad_image: str = _opt("skip", "unreadable image: skip it and count it, or stop with an error",
                             choices=["skip", "error"])
    report_sampling: str = _opt(
        "full", "text per training step: the whole cleaned report, or one random sentence (MedCLIP)",
        choices=["full", "sentence"],
    )
    short_sentence_tokens: int = _opt(
        0, "report_sampling sentence: drop sentences of this many words or fewer before sampling one "
        "(MedCLIP: 4; 0 keeps all; a report of only short sentences keeps them)", check=between(0, 1000),
    )
    sentence_label_miss: str = _opt(
        "study_labels", "sentence_labels: what a sampled sentence missing from the table gets: its study's labels, "
        "No Finding = 1 (MedCLIP's dataset code), or an error before training (every miss is counted and warned "
        "about either way)", choices=["study_labels", "no_finding", "error"],
    )
    sentence_labels: str | None = _opt(
        None, "report_sampling sentence with a medclip loss: a sentence-label table (MedCLIP's sentence-label.csv "
        "format) so a sentence has its own labels; 'auto' uses sentence_labels.csv.gz beside the dataset file "
        "when prepare wrote one; null: a sentence has its study's labels", path=True,
    )
    text_eda: float = _opt(
        0.0, "report_sampling sentence: EDA fraction alpha (random swap / deletion / insertion of in-report "
        "words, seeded per sample; 0 is off)", check=lambda v: 0 <= v < 1,
    )
    text_eda_view: bool = _opt(
        False, "report_sampling sentence: a second text view, one EDA operation per sentence (MedCLIP's random swap or "
        "random deletion, p 0.1; no synonym replacement: no offline WordNet is installed), with its own loss term: "
        "loss = (loss(text) + loss(augmented text)) / 2 with the same label targets, as MedCLIP's loss",
    )
    max_text_tokens: int = _opt(128, "text length in tokens (the simple model always uses 50 characters)",
                                check=between(1, 8192))
    text_padding: str = _opt(
        "auto", "text batches padded to the longest text in the batch (at most max_text_tokens), or always to "
        "max_text_tokens (fixed shapes); auto: longest, but max_length with compile (no recompiles)",
        choices=["auto", "longest", "max_length"],
    )
    vocab_size: int = _opt(4000, "subword vocabulary size learned from the training reports",
                           check=between(1, 1_000_000))
    train_fraction: float = _opt(
        1.0, "keep this fraction of the training pairs, whole patients, seeded by train_fraction_seed "
        "(data-efficiency runs; val and test stay whole)", check=lambda v: 0 < v <= 1,
    )
    train_fraction_seed: int = _opt(0, "seed of the train_fraction draw (fixed across training seeds by default)",
                                   check=between(0, 2**32 - 1))
    debug_subset: int = _opt(64, "samples per split used with --debug", check=between(1, _MAX_COUNT))
    # ---- model ----------------------------------------------------------------------------
    model: str = _opt("medclip", "medclip: torchvision backbone + transformer text encoder; simple: the seed's "
                                 "SimpleMedCLIPModel", choices=["medclip", "simple"])
    vision_backbone: str = _opt(
        "resnet18", "image backbone: a torchvision model, or small_cnn (4 stride-2 conv stages, 256 features)",
        choices=list(VISION_BACKBONES),
    )
    vision_pretrained: bool = _opt(False, "load torchvision ImageNet weights from the local torch hub cache (no "
                                          "download)")
    text_encoder: str = _opt("transformer", "text encoder", choices=["transformer", "bert", "precomputed"])
    text_layers: int = _opt(4, "transformer text encoder layers", check=between(1, 128))
    text_width: int = _opt(256, "transformer text encoder width", check=between(1, 16384))
    text_heads: int = _opt(4, "transformer text encoder attention heads", check=between(1, 1024))
    bert_path: str | None = _opt(None, "local Hugging Face folder of a BERT-family model (text_encoder: bert)",
                                 path=True)
    text_features_path: str | None = _opt(None, "clip_text_features.json for text_encoder: precomputed", path=True)
    embed_dim: int = _opt(512, "shared embedding size", check=between(1, 16384))
    loss: str = _opt(
        "clip", "contrastive loss: clip; medclip (MedCLIP's published soft targets); medclip_cosine (ours: "
        "row-normalised cosine of label vectors); siglip",
        choices=["clip", "medclip", "medclip_cosine", "siglip"],
    )
    siglip_bias_init: str = _opt(
        "batch_prior", "initial SigLIP bias: 'batch_prior' = -ln(pairs per step - 1), the log-odds of a positive "
        "pair (-3.4 at batch 32); 'paper' = -10, which is that prior at the paper's batch of ~32k",
        choices=["batch_prior", "paper"],
    )
    uncertain_label_value: float = _opt(
        0.5, "loss medclip_cosine: weight of an uncertain (-1) finding in its label vectors (medclip keeps -1)",
        check=lambda v: 0 <= v <= 1,
    )
    image_uncertain_labels: str = _opt(
        "keep", "label-aware losses, image side: an uncertain (-1) finding kept, or read as 0 (MedCLIP: its "
        "preprocessing writes image labels with -1 -> 0)", choices=["keep", "zero"],
    )
    text_uncertain_labels: str = _opt(
        "keep", "label-aware losses, text side: -1 kept (MedCLIP: its sentence table keeps -1), or read as 0",
        choices=["keep", "zero"],
    )
    medclip_cosine_no_finding: bool = _opt(
        True, "loss medclip_cosine: a study with no positive finding gets 'No Finding' = 1 in its label vector"
    )
    # unpaired data (MedCLIP's decoupled images and texts; medclip_nb/unpaired.py)
    unpaired_sources: list = _opt(
        [], "unpaired data mixed into training batches (loss medclip or medclip_cosine): 'images' (split "
            "train_images), "
        "'texts' (split train_texts)"
    )
    unpaired_data_path: str | None = _opt(
        None, "dataset file whose train_images / train_texts splits are the unpaired sources (e.g. prepare-chexpert's "
        "datasets.pkl: CheXpert images as MedCLIP adds them); null: data_path's own"
    )
    image_only_text: str = _opt(
        "none", "unpaired images: none (image rows learn from label similarity alone) or prompt_sentence (each gets "
        "a sentence of the sentence_labels table sampled from its labels, MedCLIP's sample_sent_prompts)",
        choices=["none", "prompt_sentence"],
    )
    unpaired_per_batch: int = _opt(8, "extra unpaired items of each used source per training step",
                                   check=between(1, 65536))
    unpaired_pool: str = _opt(
        "splits", "where unpaired items come from: 'splits' (the dataset's train_images / train_texts splits) or "
        "'train_fraction_rest' (MedCLIP's decoupling on the same data: the training patients train_fraction leaves "
        "out give their images as image-only items and their report sentences, labelled by sentence_labels, as "
        "text-only items; data/decoupled.py)", choices=["splits", "train_fraction_rest"],
    )
    # ---- training (the seed script's flags and defaults) ----------------------------------
    batch_size: int = _opt(
        32, "training batch size (pairs per step, per process; a contrastive step needs at least 2)",
        check=between(2, 65536),
    )
    num_epochs: int = _opt(10, "training epochs", check=between(1, _MAX_COUNT))
    lr: float = _opt(2e-5, "peak learning rate (AdamW)", check=positive)
    weight_decay: float = _opt(1e-4, "AdamW weight decay (not applied to biases, norms, temperature)",
                               check=non_negative)
    no_decay_rule: str = _opt(
        "ours", "parameters without weight decay: ours (every 1-D parameter: biases, norms; the logit scale and bias) "
        "or medclip (MedCLIP's trainer: names containing 'bias', 'LayerNorm.bias' or 'LayerNorm.weight')",
        choices=["ours", "medclip"],
    )
    warmup: float = _opt(0.1, "linear warmup as a fraction of total steps, in [0, 1)", check=lambda v: 0 <= v < 1)
    eval_batch_size: int = _opt(64, "evaluation batch size (a validation batch needs at least 2 pairs)",
                                check=between(1, 65536))
    eval_steps: int = _opt(1000, "validate every N optimizer steps (and at each epoch end)",
                           check=between(1, _MAX_COUNT))
    val_metrics_samples: int = _opt(
        256, "validation images (a fixed seeded subset) on which each validation also logs zero-shot accuracy and "
        "retrieval R@1/5/10 (0 turns them off)", check=between(0, 1_000_000),
    )
    epoch_validation: bool = _opt(
        True, "also validate at each epoch's end; false: only every eval_steps and once at the run's end (runs whose "
        "validation loss nothing reads, with epochs of a few steps)"
    )
    save_steps: int = _opt(
        1000,
        "write a resumable mid-epoch checkpoint every N steps; the seed's default of 1 wrote one "
        "every step, which costs more than the step itself on a GPU",
        check=between(1, _MAX_COUNT),
    )
    checkpoint_steps: list = _opt(
        [], "also write step_<N>.pth at these optimizer steps (learning curves: each is evaluated after training)",
        check=step_list, items="int",
    )
    epoch_checkpoints: bool = _opt(
        True, "write checkpoint_epoch_N.pth at each epoch's end (the seed's habit); false skips them where nothing "
        "reads them (short epochs of small train_fraction runs); last.pth is always written"
    )
    num_workers: int = _opt(4, "data loader worker processes", check=between(0, 256))
    cpu_threads: int | None = _opt(
        None, "intra-op threads of a training or evaluation process on the CPU; null: the cores (shared by the "
        "processes torchrun starts here) minus num_workers, at least 1, unless OMP_NUM_THREADS is set",
        check=between(1, 4096),
    )
    dist_backend: str = _opt(
        "auto", "torchrun's process group: auto (nccl on GPUs, gloo on the CPU), nccl, or gloo (gloo also lets "
        "processes share a GPU, which NCCL refuses)", choices=["auto", "nccl", "gloo"],
    )
    gpu_id: str = _opt("0", "CUDA device index to use (or cpu); falls back to CPU with one message when CUDA is absent",
                       check=device_name)
    seed: int = _opt(42, "random seed for weights, data order and augmentation", check=between(0, 2**32 - 1))
    model_save_path: str = _opt("./checkpoints/mimic_cxr_pretrain", "folder for checkpoints and the metrics log",
                                path=True)
    resume_from: str | None = _opt(None, "checkpoint to resume from, or 'latest' for the newest complete one in "
                                         "model_save_path", path=True)
    allow_complete: bool = _opt(False, "resume_from a checkpoint of a run that is already complete: end with a note "
                                       "(exit 0) instead of an error")
    use_amp: bool = _opt(True, "mixed precision on GPU (bf16 where supported, else fp16 with a grad scaler); CPU runs "
                               "fp32")
    debug: bool = _opt(False, "small subset, batch shapes and loss terms printed, anomaly detection on")
    # ---- training extras --------------------------------------------------------------------
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (overrides num_epochs when smaller)",
                                 check=between(1, _MAX_COUNT))
    grad_clip: float = _opt(1.0, "clip the gradient norm to this value (0 turns it off)", check=non_negative)
    early_stopping_patience: int = _opt(5, "stop after N validations without a lower val loss (0 turns it off)",
                                        check=between(0, _MAX_COUNT))
    max_nonfinite_steps: int = _opt(10, "stop after N non-finite losses in a row (each one is skipped)",
                                    check=between(1, _MAX_COUNT))
    log_every: int = _opt(10, "write a metrics row every N steps", check=between(1, _MAX_COUNT))
    tensorboard: bool = _opt(
        False, "also write the metrics rows (loss, lr, temperature, pairs/s, validation metrics) as TensorBoard "
        "events in model_save_path, one run per folder for `tensorboard --logdir checkpoints/` (optional package: "
        "pip install -e .[tensorboard])"
    )
    compile: bool = _opt(False, "torch.compile the model (GPU)")
    compile_backend: str = _opt(
        "inductor", "torch.compile's backend: inductor (generated kernels); aot_eager or eager only capture the graphs "
        "(tells a compiler problem from a model one; benchmarks/gpu_check.sh --cpu-dry-run)",
        choices=["inductor", "aot_eager", "eager"],
    )
    channels_last: bool = _opt(True, "channels_last (NHWC) memory format for the image backbone, on GPUs and CPUs "
                                     "(oneDNN's CPU convolutions prefer it too)")
    gpu_augment: bool = _opt(True, "with an image store on GPU: move uint8 batches and augment on the GPU")
    # ---- evaluation ------------------------------------------------------------------------
    zeroshot_per_class: int = _opt(200, "CheXpert-5x200: images per class (up to)", check=between(1, 10**9))
    probe_label_fractions: list = _opt(
        [0.01, 0.1, 1.0], "linear probe: fractions of the training labels it is fitted on (seeded subsets), "
        "the low-label protocol of this literature", check=fractions, items="float"
    )
    zeroshot_protocols: list = _opt(
        ["ours"], "CheXpert-5x200 zero-shot, one metrics.json entry per 5x200 rule: ours (evaluate/metrics.py; "
        "zero_shot_5x200), gloria (GLoRIA's rule: frontal, -1 kept; zero_shot_5x200_gloria), medclip (MedCLIP's own: "
        "-1 -> 0, every view, 400 per class then half, seed 42; zero_shot_5x200_medclip); gloria and medclip are "
        "scored by MedCLIP's procedure (evaluate/zeroshot_medclip.py)", check=zeroshot_rules,
    )
    zeroshot_prompts_n: int = _opt(10, "zeroshot_protocols gloria / medclip: prompts drawn per class (MedCLIP: 10)",
                                   check=between(1, 10_000))
    zeroshot_prompt_draws: int = _opt(5, "zeroshot_protocols gloria / medclip: consecutive prompt draws "
                                         "after one seed (MedCLIP: 5); accuracy as mean and std",
                                      check=between(1, 10_000))
    localisation_images: int = _opt(
        200, "localisation: test images whose finding regions are scored, a seeded subset of those with regions "
        "(0 turns it off; docs/localisation.md)", check=between(0, 10**9),
    )
    localisation_maps: list = _opt(
        ["similarity", "gradcam"], "localisation: the maps scored, similarity (each image location's embedding "
        "against the text's) and/or gradcam (Grad-CAM of the image-text similarity)",
        check=lambda v: bool(v) and len(set(v)) == len(v) and set(v) <= {"similarity", "gradcam"}, items="str",
    )
    localisation_boxes: str | None = _opt(
        None, "localisation: CSV of finding boxes of the test images (MS-CXR's table reads as it is; docs/"
        "localisation.md); null: the regions the phantom drew (each record's `regions` file)"
    )
    baselines: list = _opt(["random_init", "simple"], "notebook 04's baselines: random_init (the same architecture, "
                           "untrained), simple (the seed's model, trained with the same settings)",
                           check=lambda v: set(v) <= {"random_init", "simple"})
    ablation_seeds: list = _opt([], "notebook 04: seeds of the model/loss ablation (empty: no ablation; see `make "
                                    "ablation`)", items="int")
    ablation_variants: list = _opt(
        ["simple", "clip", "medclip", "medclip_cosine", "siglip"], "notebook 04 with ablation_seeds: the variants "
        "trained on all the pairs (study/ablation.py VARIANTS; clip, the reference of the paired differences, is "
        "required; clip, medclip and medclip_cosine there are the data-efficiency grid's own runs on all the pairs)",
        check=lambda v: "clip" in v and set(v) <= {"simple", "clip", "medclip", "medclip_cosine", "siglip"},
    )
    data_efficiency_fractions: list = _opt([0.1, 0.3, 1.0], "notebook 04 with ablation_seeds: train_fraction values "
                                           "of the data-efficiency grid (every arm of study.DATA_EFFICIENCY_ARMS, "
                                           "every ablation seed; [1.0]: none)", check=fractions, items="float")
    ablation_curve_points: list = _opt(
        [0.25, 0.5, 0.75, 1.0], "notebook 04 with ablation_seeds: the learning-curve points of every run, as "
        "fractions of max_steps (checkpoints of the one run per seed, each evaluated; 1.0 is always one)",
        check=fractions, items="float",
    )
    ablation_jobs: int = _opt(
        1, "notebook 04 with ablation_seeds: runs trained at once, each in its own process with cores / jobs "
        "CPU threads (unless cpu_threads is set); on 2 CPU cores 2 jobs of one thread train more runs per minute "
        "than one run on both (docs/data_efficiency.md); 1 on a GPU", check=between(1, 256),
    )
    ablation_target_accuracy: float | None = _opt(
        None, "notebook 04 with ablation_seeds: the zero-shot accuracy whose steps-to-reach each arm's table gives; "
        "null: 0.9 x clip's end point on all the pairs", check=lambda v: 0 < v < 1,
    )
    reports_dir: str = _opt("reports", "folder for metrics.json, executed notebooks and figures/ of the study",
                            path=True)

    # ------------------------------------------------------------------------------------------
    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    # Paths from the config, resolved from the repository root.
    def path(self, key: str) -> Path | None:
        return resolve(getattr(self, key))


CONFIG_KEYS = tuple(f.name for f in fields(Config))


def unknown_keys(values: Mapping[Any, Any], source: str) -> list[str]:
    """Keys of `values` that are no config key; a key that is not a string is an error itself
    (YAML reads `1: x` as an int key, and sorting mixed keys would fail)."""
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: config key {quote(key)} is not a string")
    return sorted(set(values) - set(CONFIG_KEYS))


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """' (did you mean 'batch_size'?)' for the closest of `choices` (difflib), else ''."""
    import difflib

    close = difflib.get_close_matches(word.lstrip("-"), [c.lstrip("-") for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {quote(prefix + close[0])}?)" if close else ""


def unknown_key_error(key: str, source: str) -> ConfigError:
    """The one line for a key that is no config key: a renamed key names its new one, any other the
    closest key when one is close."""
    retired = retired_key_message(key, source)  # a renamed key names its new one
    if retired:
        return ConfigError(retired)
    hint = did_you_mean(key, CONFIG_KEYS) or " (see `python -m medclip_nb train --help` for the keys)"
    return ConfigError(f"{source}: unknown config key {quote(key)}{hint}")


def from_dict(values: Mapping[str, Any], source: str = "config") -> Config:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: config must be a mapping of keys, got {type(values).__name__}")
    unknown = unknown_keys(values, source)
    if unknown:
        raise unknown_key_error(unknown[0], source)
    return Config(**dict(values))
