"""`python -m medclip_nb bench-train` (`make bench-train`): training pairs/s of one config under
several settings, side by side in one run.

Each setting trains the config from scratch with `train()` for `steps` steps, in a temporary
folder; its pairs/s are those of the metrics rows after the first `warmup` steps (each row's
window: fetch, step, logging and any checkpoint written in it), so loading the data, learning
the tokenizer and building the model are left out. Settings run one after another in every
round, for `rounds` rounds, so that load from other processes falls on all of them alike; each
setting's median is printed with the per-round ratio to the first setting (median and range).

Settings are named; `name:key=value,...` adds config keys to a named one:

    old      the trainer before issue 29: torch's own thread count (every core) beside the
             loader workers, text padded to max_text_tokens, deterministic mode's NaN fill,
             for-loop AdamW and NCHW images on the CPU
    threads  old, with the thread rule of now (cores - num_workers, at least 1)
    new      the config as it is, with this checkout's choices (runtime.CPU_CHOICES)
"""

from __future__ import annotations

import re
import shutil
import statistics
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from medclip_nb.config import Config
from medclip_nb.errors import ConfigError
from medclip_nb.runtime import cpu_choices
from medclip_nb.tools.step_bench import EARLIER_CHOICES
from medclip_nb.train import train

SETTING_NAMES = ("old", "threads", "new")
THREAD_WORDS = re.compile(r"^Training\.\.\. \(.*?(\d+ CPU thread\(s\)[^;]*?)\)$")  # train()'s first line


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """'new' or 'new:num_workers=1,cpu_threads=2' -> (name, config overrides); ConfigError naming
    the flag for an unknown name or key."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in SETTING_NAMES:
        raise ConfigError(f"--settings: {name!r} is not one of {', '.join(SETTING_NAMES)}")
    overrides = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        if not equals:
            raise ConfigError(f"--settings: {item!r} is not key=value")
        try:  # a value as YAML reads it (2, 0.5, true, resnet18); Config checks it
            overrides[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            raise ConfigError(f"--settings: {item!r} is not key=value") from None
    return name, overrides


def setting_config(cfg: Config, name: str, overrides: dict[str, Any], default_threads: int) -> Config:
    """The config a setting trains with (its thread and padding keys; overrides last)."""
    changes: dict[str, Any] = {}
    if name in ("old", "threads"):
        changes["text_padding"] = "max_length"
    if name == "old":
        changes["cpu_threads"] = default_threads
    return cfg.replace(**changes, **overrides)


def window_pairs_per_s(history: list[dict], batch_pairs: int, warmup: int) -> tuple[float, int]:
    """(pairs/s, steps) over the train rows after step `warmup`: each row covers the steps since
    the previous row, and its pairs_per_s gives their seconds."""
    pairs = seconds = 0.0
    steps, previous = 0, 0
    for row in history:
        if row.get("split") != "train":
            continue
        window = row["step"] - previous
        previous = row["step"]
        if row["step"] <= warmup or not row.get("pairs_per_s"):
            continue
        pairs += window * batch_pairs
        seconds += window * batch_pairs / row["pairs_per_s"]
        steps += window
    return (pairs / seconds if seconds else float("nan")), steps


def time_settings(cfg: Config, settings: list[str], steps: int = 30, warmup: int = 6, rounds: int = 3,
                  folder: Path | None = None) -> list[dict[str, Any]]:
    """One row per setting: its pairs/s per round, the median and the ratio to the first setting."""
    parsed = [parse_setting(text) for text in settings]
    default_threads = torch.get_num_threads()  # torch's own count (OMP_NUM_THREADS or the cores)
    configs = [setting_config(cfg, name, overrides, default_threads).replace(max_steps=steps)
               for name, overrides in parsed]
    root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="bench_train_"))
    rates: list[list[float]] = [[] for _ in settings]
    threads: list[str] = [""] * len(settings)
    try:
        for number in range(rounds):
            for index, ((name, _), run_cfg) in enumerate(zip(parsed, configs)):
                lines: list[str] = []
                with cpu_choices(**EARLIER_CHOICES) if name == "old" else nullcontext():
                    result = train(run_cfg.replace(model_save_path=str(root / f"{index}-{number}")), log=lines.append)
                threads[index] = (f"{default_threads} CPU thread(s): torch's own count" if name == "old" else
                                  next((m.group(1) for m in map(THREAD_WORDS.search, lines) if m), ""))
                rate, timed = window_pairs_per_s(result.history, run_cfg.batch_size, warmup)
                rates[index].append(rate)
                print(f"bench-train: round {number + 1}/{rounds}, {settings[index]}: {rate:.1f} pairs/s over "
                      f"{timed} steps", flush=True)
    finally:
        if folder is None:
            shutil.rmtree(root, ignore_errors=True)
    rows = []
    for index, setting in enumerate(settings):
        per_round = [r / first for r, first in zip(rates[index], rates[0])]
        rows.append({"setting": setting, "threads": threads[index], "pairs_per_s": rates[index],
                     "median": statistics.median(rates[index]), "ratio_median": statistics.median(per_round),
                     "ratio_min": min(per_round), "ratio_max": max(per_round)})
    return rows


def format_rows(rows: list[dict[str, Any]], cfg_name: str, steps: int, warmup: int) -> str:
    width = max(len(r["setting"]) for r in rows)
    lines = [f"bench-train: {cfg_name}, {steps} steps per run ({warmup} untimed), "
             f"{len(rows[0]['pairs_per_s'])} interleaved rounds",
             f"{'setting':<{width}} {'pairs/s':>8} {'x first':>8} {'range':>13}  threads"]
    for r in rows:
        lines.append(f"{r['setting']:<{width}} {r['median']:>8.1f} {r['ratio_median']:>8.2f} "
                     f"{r['ratio_min']:>6.2f}-{r['ratio_max']:<6.2f}  {r['threads']}")
    return "\n".join(lines)


def main_bench_train(cfg: Config, cfg_name: str, settings: str, steps: int, warmup: int,
                     rounds: int) -> list[dict[str, Any]]:
    """`bench-train`: `settings` separated by ';' (module docstring), timed and printed."""
    settings = [s.strip() for s in settings.split(";") if s.strip()]
    if warmup >= steps:
        raise ConfigError(f"--untimed {warmup} leaves no timed step of --steps {steps}")
    rows = time_settings(cfg, list(settings), steps, warmup, rounds)
    print(format_rows(rows, cfg_name, steps, warmup))
    return rows
