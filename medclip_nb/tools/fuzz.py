"""`python -m medclip_nb.tools.fuzz --n 2000` (`make fuzz`): seeded mutations of a valid
datasets.pkl, JSON Lines manifest, YAML config and checkpoint, each run through the CLI.

Every outcome must be either "loaded" (exit 0) or a one-line `error: ...` with exit 2; a
traceback (an exception other than the project's UserError escaping `cli.main`, or a message
of more than one line) or a crash (the process killed by a signal) is a defect. Inputs run in
a child process per format (address space capped by `--memory-gib`) so that a crash is seen
and counted, not fatal; the table gives each child's peak resident memory.

The CLI paths: `convert --data_path X.pkl` and `convert --data_path X.jsonl` (load, validate,
write a manifest); `train --config X.yaml` up to the trainer (the trainer itself is replaced by
a stub passed to `cli.main(work=...)`: training is not the subject); `evaluate --checkpoint
X.pth` up to the evaluation (model rebuilt from the checkpoint, then a stub), then the resume path
(the checkpoint checks, `train.restore_training_state` into a fresh model's step, RNG restore).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medclip_nb import cli, errors
from medclip_nb.config import from_dict
from medclip_nb.config_load import load_config
from medclip_nb.model import RESUME_PARTS, build_model, check_checkpoint, load_checkpoint, load_model, restore_rng_state
from medclip_nb.paths import resolve
from medclip_nb.runtime import World
from medclip_nb.text import tokenizer_from_json
from medclip_nb.train import build_train_step, restore_training_state, train

FORMATS = ("pickle", "manifest", "yaml", "checkpoint")
OUTCOMES = ("loaded", "one-line error", "traceback", "crash")
_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 8,
                b"9" * 30, b"-1", b"1e400", b"[[[[[[[[", b"{{{{", b"&a *a", b"\n", b"'", b'"', b"\\u0000"]


# ---- seeds ------------------------------------------------------------------------------------
def _records(n: int) -> list[dict]:
    labels = [1.0, 0.0, -1.0, float("nan")] + [0.0] * 10
    return [{"image_path": f"img{i}.png", "report": f"Finding {i}. No effusion.",
             "labels": np.array(labels, dtype=np.float32), "study_id": np.int64(i), "subject_id": i,
             "view": "PA"} for i in range(n)]


def make_seeds(folder: Path) -> dict[str, Path]:
    """Valid inputs of each format in `folder` (images, dataset, manifest, config, checkpoint)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        Image.fromarray(np.full((20, 18), 40 * i, dtype=np.uint8)).save(folder / f"img{i}.png")
    data = {"train": _records(4), "val": _records(2), "test": _records(2)}
    pkl = folder / "datasets.pkl"
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    manifest = folder / "manifest.jsonl"
    with manifest.open("w") as f:
        for split, records in data.items():
            for r in records:
                row = {"split": split, **{k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()}}
                row["labels"] = [None if isinstance(v, float) and v != v else v for v in row["labels"]]
                f.write(json.dumps(row) + "\n")
    yaml_path = folder / "config.yaml"
    yaml_path.write_text(
        f"data_path: {pkl}\nmodel: simple\nembed_dim: 8\nimage_size: 16\nresize_size: 16\nbatch_size: 2\n"
        f"eval_batch_size: 2\nnum_workers: 0\nmax_steps: 2\nlr: 1.0e-4\nfrontal_views: [PA, AP]\n"
        f"model_save_path: {folder / 'run'}\nseed: 3\nwarmup: 0.1\nuse_amp: false\n")
    checkpoint = folder / "run" / "last.pth"
    if not checkpoint.is_file():
        with contextlib.redirect_stderr(io.StringIO()):
            train(load_config(yaml_path), log=lambda *a, **k: None)
    return {"pickle": pkl, "manifest": manifest, "yaml": yaml_path, "checkpoint": checkpoint}


# ---- mutations --------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level edits: flips, interesting values, deletions, duplications, cuts."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out += rng.choice(_INTERESTING)
            continue
        at = rng.randrange(len(out))
        kind = rng.randrange(6)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            value = rng.choice(_INTERESTING)
            out[at:at + len(value)] = value
        elif kind == 2:
            del out[at:at + rng.randint(1, 16)]
        elif kind == 3:
            chunk = out[at:at + rng.randint(1, 64)]
            out[at:at] = chunk * rng.randint(1, 8)
        elif kind == 4:
            del out[at:]
        else:
            out[at] = rng.randrange(256)
    return bytes(out)


def _junk(rng: random.Random, depth: int = 0) -> Any:
    choices = [None, True, -1, 0, 2**40, 2**70, -2**70, 1e308, float("nan"), float("inf"), "", "x" * 5000,
               "\x00", "é", b"\x00\x01", [], {}, [1, 2], {"a": 1}, (1, "b")]
    value = rng.choice(choices)
    if depth < 2 and rng.random() < 0.2:
        value = [_junk(rng, depth + 1)] if rng.random() < 0.5 else {"k": _junk(rng, depth + 1)}
    return value


def mutate_text(text: str, rng: random.Random) -> str:
    """YAML / JSON Lines: swap a scalar for an odd one, nest, alias-bomb, or edit bytes."""
    kind = rng.randrange(5)
    lines = text.splitlines(keepends=True) or [""]
    at = rng.randrange(len(lines))
    odd = rng.choice(["-1", "4294967296", "1e11", "200000", "null", "[]", "{}", "true", "'\\x00'", "~",
                      "!!python/object:os.system ''", "&a [*a, *a]", "0x7fffffffffffffffff", "1" * 5000,
                      "[" * 2000 + "]" * 2000, "{" * 100000, "2001-01-01", "NaN", ".inf", '"\\ud800"'])
    if kind == 0 and ":" in lines[at]:
        key = lines[at].split(":", 1)[0]
        lines[at] = f"{key}: {odd}\n"
    elif kind == 1 and '": ' in lines[at]:
        parts = lines[at].split('": ')
        i = rng.randrange(1, len(parts))
        parts[i] = odd + ("," + parts[i].split(",", 1)[1] if "," in parts[i] else "}")
        lines[at] = '": '.join(parts) + ("\n" if not parts[-1].endswith("\n") else "")
    elif kind == 2:
        key = rng.choice(["frontal_views", "embed_dim", "data_path", "ablation_seeds", "unpaired_sources"])
        lines = [line for line in lines if not line.startswith(key + ":")]
        lines.append(f"{key}: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(  # 9**9 items, if expanded
            f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)) + "]\n")
    elif kind == 3:
        lines.insert(at, rng.choice(["1: one\n", "? [a, b]\n: c\n", "{x: 1}\n", "- item\n", "\ufeffkey: 1\n"]))
    else:
        return mutate_bytes(text.encode("utf-8"), rng).decode("utf-8", errors="surrogateescape")
    return "".join(lines)


def mutate_pickle(data: bytes, rng: random.Random) -> bytes:
    """Byte edits, or a valid pickle of a structurally odd dataset (NumPy arrays included)."""
    if rng.random() < 0.6:
        return mutate_bytes(data, rng)
    dataset = pickle.loads(data)  # our own seed, trusted
    split = rng.choice(list(dataset))
    record = rng.choice(dataset[split])
    key = rng.choice(list(record) + ["labels", "labels", "extra"])
    kind = rng.randrange(4)
    if kind == 0:
        record[key] = _junk(rng)
    elif kind == 1:
        dtype = rng.choice(["f4", "f8", "i8", "u1", "b1", "c16", "U3", ">f4"])
        record[key] = np.zeros(rng.choice([0, 1, 14, 15, 300]), dtype=dtype)
    elif kind == 2:
        dataset[rng.choice(["train", "val", "test", "bogus", 7])] = _junk(rng)
    else:
        record[key] = np.float64(rng.choice([1.0, float("nan"), 2.0, -1.0]))
    return pickle.dumps(dataset, protocol=rng.choice([2, 3, 4, 5]))


def mutate_checkpoint(path: Path, rng: random.Random) -> bytes:
    """Byte edits (caught by the archive checksums), or a validly written checkpoint with one
    field set to something odd (caught by the structural checks)."""
    import torch

    raw = path.read_bytes()
    if rng.random() < 0.4:
        return mutate_bytes(raw, rng)
    state = torch.load(path, weights_only=True)
    field = rng.choice(["config", "rng", "scheduler", "step", "epoch", "batch_in_epoch", "tokenizer", "model",
                        "optimizer", "scaler", "world_size", "best_val_loss", "train_time"])
    kind = rng.randrange(3)
    if kind == 0 or not isinstance(state.get(field), (dict, list)):
        state[field] = _plainish(_junk(rng))
    elif isinstance(state[field], dict) and state[field]:
        key = rng.choice(list(state[field]))
        if field == "model" and rng.random() < 0.5:
            tensor = state[field][key]
            state[field][key] = torch.full_like(tensor, float("nan")) if tensor.is_floating_point() \
                else tensor.reshape(-1)[:0]
        else:
            state[field][key] = _plainish(_junk(rng))
    elif isinstance(state[field], list) and state[field]:
        state[field][rng.randrange(len(state[field]))] = _plainish(_junk(rng))
    if rng.random() < 0.2:
        state.pop(rng.choice(list(state)))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _plainish(value: Any) -> Any:
    """torch.save(weights_only) cannot hold bytes: a string instead."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


# ---- running through the CLI --------------------------------------------------------------------
class _Reached(Exception):
    """Raised by the stubs at the point where the input has been fully loaded."""


def _cli(argv: list[str]) -> tuple[str, str]:
    """Run `cli.main(argv)` in-process: (outcome, detail)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = cli.main(argv, work=STUBS)
    except _Reached:
        return "loaded", ""
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - exactly what the fuzz looks for
        return "traceback", f"{type(e).__name__}: {str(e)[:200]}"
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if rc == 0:
        return "loaded", ""
    if rc == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "one-line error", lines[0][:200]
    return "traceback", f"rc {rc}: {' | '.join(lines)[:200]}"


def _reached(*_args, **_kwargs):
    raise _Reached


def _evaluate_stub(checkpoint, out_dir=None, overrides=None):
    """What `evaluate` reads before it evaluates, as evaluate_checkpoint reads it: the checkpoint
    (model rebuilt from it) with the flags' overrides applied; then it stops."""
    _model, _tokenizer, cfg = load_model(resolve(checkpoint), "cpu")
    cfg.replace(**dict(overrides or {}))
    raise _Reached


# The trainer and the evaluation itself are replaced (cli.main's `work`); everything that reads
# the inputs is real.
STUBS = {"train": _reached, "evaluate": _evaluate_stub}


def _resume_path(path: Path) -> tuple[str, str]:
    """The resume checks and restore of `train` on a fresh model, as `train --resume_from` does."""
    try:
        state = check_checkpoint(load_checkpoint(path), path, RESUME_PARTS)
        cfg = from_dict(state["config"])
        model = build_model(cfg, tokenizer_from_json(state["tokenizer"]))
        step = build_train_step(cfg, model, torch.device("cpu"), total_steps=10**6, say=lambda *a: None,
                                guard_state=state)
        restore_training_state(path, state, cfg, World(), 10**6, step, lambda *a: None)
        restore_rng_state(state["rng"])
        step.scheduler.step()
        return "loaded", ""
    except errors.UserError as e:
        message = str(e)
        return ("one-line error", message[:200]) if "\n" not in message else ("traceback", message[:200])
    except BaseException as e:  # noqa: BLE001
        return "traceback", f"{type(e).__name__}: {str(e)[:200]}"


def run_one(fmt: str, data: bytes, work: Path, seeds: dict[str, Path]) -> tuple[str, str]:
    """Write one mutated input and run it through its CLI path."""
    suffix = {"pickle": ".pkl", "manifest": ".jsonl", "yaml": ".yaml", "checkpoint": ".pth"}[fmt]
    target = work / f"input{suffix}"
    target.write_bytes(data)
    out = work / "out"
    if fmt in ("pickle", "manifest"):
        converted = work / "converted.jsonl"
        converted.unlink(missing_ok=True)
        return _cli(["convert", "--data_path", str(target), "--out", str(converted)])
    if fmt == "yaml":
        return _cli(["train", "--config", str(target)])
    outcome = _cli(["evaluate", "--checkpoint", str(target), "--out", str(out),
                    "--data_path", str(seeds["pickle"])])
    if outcome[0] != "loaded":
        return outcome
    return _resume_path(target)


def mutations(fmt: str, seeds: dict[str, Path], n: int, seed: int):
    rng = random.Random(f"{fmt}-{seed}")
    original = seeds[fmt].read_bytes()
    mutate: Callable[[], bytes] = {
        "pickle": lambda: mutate_pickle(original, rng),
        "manifest": lambda: mutate_text(original.decode(), rng).encode("utf-8", errors="surrogateescape"),
        "yaml": lambda: mutate_text(original.decode(), rng).encode("utf-8", errors="surrogateescape"),
        "checkpoint": lambda: mutate_checkpoint(seeds["checkpoint"], rng),
    }[fmt]
    for _ in range(n):
        yield mutate()


def run_format(fmt: str, n: int, seed: int, folder: Path, report: Callable[[str, str, int], None] | None = None,
               start: int = 0) -> Counter:
    """In-process: `n` mutations of `fmt` (from index `start`); returns the outcome counts."""
    seeds = make_seeds(folder / "seeds")
    work = folder / f"work-{fmt}"
    work.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    for index, data in enumerate(mutations(fmt, seeds, n, seed)):
        if index < start:
            continue
        outcome, detail = run_one(fmt, data, work, seeds)
        counts[outcome] += 1
        if report is not None:
            report(outcome, detail, index)
    return counts


# ---- child processes and the table --------------------------------------------------------------
def _child(fmt: str, n: int, seed: int, folder: str, start: int, memory_gib: float) -> None:
    limit = int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def report(outcome: str, detail: str, index: int) -> None:
        print(json.dumps({"i": index, "outcome": outcome, "detail": detail}), flush=True)

    run_format(fmt, n, seed, Path(folder), report, start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"done": True, "peak_mib": peak_kib / 1024}), flush=True)


def fuzz_format(fmt: str, n: int, seed: int, folder: Path, memory_gib: float) -> dict:
    """Run `n` mutations of `fmt` in child processes; a child killed by a signal counts a crash
    for the input it was on and a new child carries on after it."""
    counts: Counter = Counter()
    examples: dict[str, str] = {}
    peak = 0.0
    start = 0
    while start < n:
        command = [sys.executable, "-m", "medclip_nb.tools.fuzz", "--child", fmt, "--n", str(n), "--seed", str(seed),
                   "--folder", str(folder), "--start", str(start), "--memory-gib", str(memory_gib)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TQDM_DISABLE": "1"})
        last = start - 1
        finished = False
        for line in proc.stdout:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("done"):
                peak = max(peak, row["peak_mib"])
                finished = True
                continue
            last = row["i"]
            counts[row["outcome"]] += 1
            if row["outcome"] not in ("loaded", "one-line error"):
                examples.setdefault(row["outcome"], f"#{row['i']}: {row['detail']}")
        stderr = proc.stderr.read()
        proc.wait()
        if finished and proc.returncode == 0:
            break
        counts["crash"] += 1  # the input after the last reported one
        examples.setdefault("crash", f"#{last + 1}: exit {proc.returncode} {stderr.strip()[-200:]}")
        start = last + 2
    return {"format": fmt, "counts": counts, "peak_mib": peak, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medclip_nb.tools.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="mutations per format (default: 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--memory-gib", type=float, default=4.0,
                        help="address-space cap of each child (virtual memory; torch alone maps ~1.5 GiB)")
    parser.add_argument("--folder", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.n, args.seed, args.folder, args.start, args.memory_gib)
        return 0
    with tempfile.TemporaryDirectory(prefix="medclip-fuzz-") as tmp:
        folder = Path(args.folder or tmp)
        make_seeds(folder / "seeds")  # once, before the children (the checkpoint is a short training run)
        print(f"{'format':11s} {'n':>6s} " + " ".join(f"{o:>15s}" for o in OUTCOMES) + f" {'peak RSS MiB':>13s} "
                                                                                       f"{'s':>6s}")
        failures = 0
        for fmt in args.formats.split(","):
            started = time.perf_counter()
            result = fuzz_format(fmt, args.n, args.seed, folder, args.memory_gib)
            counts = result["counts"]
            failures += counts["traceback"] + counts["crash"]
            print(f"{fmt:11s} {args.n:6d} " + " ".join(f"{counts[o]:15d}" for o in OUTCOMES)
                  + f" {result['peak_mib']:13.0f} {time.perf_counter() - started:6.0f}", flush=True)
            for outcome, example in result["examples"].items():
                print(f"    first {outcome}: {example}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
