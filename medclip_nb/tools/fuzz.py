"""`python -m medclip_nb.tools.fuzz --n 100` (`make fuzz`): seeded mutations of the eight kinds of
input a user or a model file hands the command line (fuzz_inputs.py), each run through it.

Every case must end "loaded" (exit 0) or as a one-line `error: ...` with exit 2. A defect is:
a traceback (an exception other than the project's UserError escaping `cli.main`, or a message
of more than one line), a signal (the process killed: a segfault, an abort from a native
library), a hang (a case running past `--timeout`), memory (a case whose peak resident memory
passes its baseline by more than 1 GiB; no address-space cap hides it: the child is watched and
killed past 3 GiB), or a silent wrong result (bytes changed behind a checksum, yet loaded with a
different model).

Memory per case: before each case the child resets its peak (Linux `/proc/self/clear_refs`)
and records its resident memory; afterwards the peak's rise over that baseline is the case's.
`predict` runs with `--num_workers 0`, so images are decoded where they are measured.

The command-line paths: `convert` of a datasets.pkl, JSON Lines or CSV manifest (load, validate,
write a manifest); `train --config` up to the trainer (replaced by a stub through
`cli.main(work=...)`: training is not the subject); `evaluate --checkpoint` up to the evaluation
(model rebuilt, then a stub), then the resume path (train's own checks and restore); `predict`
for real with an export folder (two images), with a mutated image file, and with a prompts file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from medclip_nb import cli, errors
from medclip_nb.config_load import load_config
from medclip_nb.model import build_model, load_model, model_config, restore_rng_state
from medclip_nb.paths import resolve
from medclip_nb.runtime import World
from medclip_nb.text import tokenizer_from_json
from medclip_nb.tools.fuzz_inputs import (
    KINDS,
    Case,
    make_seeds,
    mutate_checkpoint,
    mutate_export,
    mutate_image,
    mutate_pickle,
    mutate_prompts,
    text_case,
)
from medclip_nb.train import build_train_step, open_resume_point, restore_training_state

FORMATS = KINDS
OUTCOMES = ("loaded", "one-line error", "traceback", "signal", "hang", "over 1 GiB", "silent wrong")
GOOD = ("loaded", "one-line error")
MEMORY_LIMIT = 1 << 30  # a case may use this much above its baseline
KILL_ABOVE = 3 << 30  # the watchdog's line: a case this far above the child's baseline is killed
# Images are decoded in this process, where the case's memory is measured (not in loader workers).
IN_PROCESS = ("--num_workers", "0")
_SUFFIX = {"pickle": ".pkl", "manifest": ".jsonl", "csv": ".csv", "yaml": ".yaml", "checkpoint": ".pth",
           "image": ".png", "prompts": ".yaml"}


# ---- one case through the CLI -------------------------------------------------------------------------
class _Reached(Exception):
    """Raised by the stubs at the point where the input has been fully loaded."""


_LOADED: dict = {}  # what the last evaluate stub loaded (its fingerprint)


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
    # Progress lines (working(), headless bars) may precede the error; a traceback's frames may not.
    errors = [line for line in lines if line.startswith("error: ")]
    clean = not any(line.startswith(("Traceback", " ")) for line in lines)
    if rc == 2 and len(errors) == 1 and lines[-1] == errors[0] and clean:
        return "one-line error", errors[0][:200]
    return "traceback", f"rc {rc}: {' | '.join(lines)[:200]}"


def _reached(*_args, **_kwargs):
    raise _Reached


def _fingerprint(model: torch.nn.Module, tokenizer) -> str:
    digest = hashlib.sha256(tokenizer.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _evaluate_stub(checkpoint, out_dir=None, overrides=None):
    """What `evaluate` reads before it evaluates, as evaluate_checkpoint reads it: the checkpoint
    (model rebuilt from it, its model keys only) with the flags' overrides; then it stops."""
    model, tokenizer, stored = load_model(resolve(checkpoint), "cpu")
    model_config(stored.to_dict(), checkpoint).replace(**dict(overrides or {}))
    _LOADED["fingerprint"] = _fingerprint(model, tokenizer)
    raise _Reached


# The trainer and the evaluation itself are replaced (cli.main's `work`); everything that reads
# the inputs is real.
STUBS = {"train": _reached, "evaluate": _evaluate_stub}


def _resume_path(path: Path, yaml_path: Path) -> tuple[str, str]:
    """`train --config YAML --resume_from PATH` up to the first step: train's own checks of the
    checkpoint and its tokenizer (open_resume_point), the model of the user's config, the restore."""
    try:
        cfg = load_config(yaml_path, {"resume_from": str(path)})
        found, state = open_resume_point(cfg, lambda *a: None)
        model = build_model(cfg, tokenizer_from_json(state["tokenizer"]))
        step = build_train_step(cfg, model, torch.device("cpu"), total_steps=10**6, say=lambda *a: None,
                                guard_state=state)
        restore_training_state(found, state, cfg, World(), 10**6, step, lambda *a: None)
        restore_rng_state(state["rng"])
        step.scheduler.step()
        return "loaded", ""
    except errors.UserError as e:
        message = str(e)
        return ("one-line error", message[:200]) if "\n" not in message else ("traceback", message[:200])
    except BaseException as e:  # noqa: BLE001
        return "traceback", f"{type(e).__name__}: {str(e)[:200]}"


class Runner:
    """Runs cases of one kind in a work folder, with the seeds' own results to compare against."""

    def __init__(self, kind: str, seeds: dict[str, Path], work: Path):
        self.kind, self.seeds, self.work = kind, seeds, work
        work.mkdir(parents=True, exist_ok=True)
        self.images = [str(seeds["image"]), str(seeds["image"].with_name("img2.png"))]
        self.expected: dict[str, str] = {}
        if kind == "checkpoint":
            for name in ("checkpoint", "checkpoint_medclip"):
                model, tokenizer, _ = load_model(seeds[name], "cpu")
                self.expected[name] = _fingerprint(model, tokenizer)
        if kind == "export":
            self.expected["export"] = self._predict_export(seeds["export"])[1]

    def mutate(self, rng: random.Random) -> Case:
        kind, seeds = self.kind, self.seeds
        if kind == "pickle":
            return mutate_pickle(seeds["pickle"].read_bytes(), rng)
        if kind in ("manifest", "csv", "yaml"):
            keys = ("frontal_views", "embed_dim", "data_path", "ablation_seeds", "unpaired_sources")
            return text_case(seeds[kind].read_bytes(), rng, keys)
        if kind == "checkpoint":
            source = rng.choice(["checkpoint", "checkpoint_medclip"])
            case = mutate_checkpoint(seeds[source], rng)
            case.note = source
            return case
        if kind == "export":
            return mutate_export(seeds["export"], rng)
        if kind == "image":
            return mutate_image(seeds, rng)
        return mutate_prompts(seeds["prompts"].read_bytes(), rng)

    def write(self, case: Case) -> Path:
        """Put the case on disk (the export: a fresh copy of the seed folder, changed)."""
        if self.kind == "export":
            target = self.work / "export"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.seeds["export"], target)
            for name, data in case.files.items():
                if data is None:
                    (target / name).unlink(missing_ok=True)
                else:
                    (target / name).write_bytes(data)
            return target
        target = self.work / f"input{_SUFFIX[self.kind]}"
        target.write_bytes(case.data)
        return target

    def _predict_export(self, folder: Path) -> tuple[tuple[str, str], str]:
        out = self.work / "predicted.csv"
        out.unlink(missing_ok=True)
        outcome = _cli(["predict", "--checkpoint", str(folder), *self.images, "--csv", str(out), "--force",
                        *IN_PROCESS])
        return outcome, out.read_text() if outcome[0] == "loaded" and out.is_file() else ""

    def run(self, case: Case, target: Path) -> tuple[str, str]:
        kind, seeds, work = self.kind, self.seeds, self.work
        if kind in ("pickle", "manifest", "csv"):
            converted = work / "converted.jsonl"
            converted.unlink(missing_ok=True)
            return _cli(["convert", "--data_path", str(target), "--out", str(converted)])
        if kind == "yaml":
            return _cli(["train", "--config", str(target)])
        if kind == "checkpoint":
            _LOADED.clear()
            outcome = _cli(["evaluate", "--checkpoint", str(target), "--out", str(work / "out"),
                            "--data_path", str(seeds["pickle"])])
            if outcome[0] != "loaded":
                return outcome
            if case.tampered and _LOADED.get("fingerprint") != self.expected[case.note]:
                return "silent wrong", "bytes changed behind the archive checksums, yet loaded with other weights"
            return _resume_path(target, seeds["yaml" if case.note == "checkpoint" else "yaml_medclip"])
        if kind == "export":
            outcome, table = self._predict_export(target)
            if outcome[0] == "loaded" and case.tampered and table != self.expected["export"]:
                return "silent wrong", f"{case.note}: changed behind SHA256SUMS, yet predicted other probabilities"
            return outcome
        if kind == "image":
            return _cli(["predict", "--checkpoint", str(seeds["checkpoint"]), str(target), *IN_PROCESS])
        return _cli(["predict", "--checkpoint", str(seeds["checkpoint"]), self.images[0], "--prompts", str(target),
                     *IN_PROCESS])


# ---- memory of one case ----------------------------------------------------------------------------------
def _status(field: str, pid: int | str = "self") -> int:
    """A /proc/<pid>/status memory field in bytes (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
        return True
    except OSError:
        return False


def run_format(fmt: str, n: int, seed: int, folder: Path, report: Callable[..., None] | None = None,
               start: int = 0, on_start: Callable[[int, int], None] | None = None) -> Counter:
    """In-process: `n` mutations of `fmt` (from index `start`); returns the outcome counts.
    `report(outcome, detail, index, peak_bytes)` after each case; `on_start(index, baseline)` before."""
    seeds = make_seeds(folder / "seeds")
    runner = Runner(fmt, seeds, folder / f"work-{fmt}")
    rng = random.Random(f"{fmt}-{seed}")
    counts: Counter = Counter()
    for index in range(n):
        case = runner.mutate(rng)
        if index < start:
            continue
        target = runner.write(case)
        del case.data
        gc.collect()
        baseline = _status("VmRSS")
        measured = _reset_peak()
        if on_start is not None:
            on_start(index, baseline)
        outcome, detail = runner.run(case, target)
        peak = max(_status("VmHWM") - baseline, 0) if measured else 0
        if outcome in GOOD and peak > MEMORY_LIMIT:
            outcome, detail = "over 1 GiB", f"{peak / 2**30:.2f} GiB above its baseline ({detail or case.note})"
        counts[outcome] += 1
        if report is not None:
            report(outcome, detail, index, peak)
    return counts


# ---- child processes, the watchdog, the table --------------------------------------------------------------
def _child(fmt: str, n: int, seed: int, folder: str, start: int) -> None:
    torch.set_num_threads(1)

    def started(index: int, baseline: int) -> None:
        print(json.dumps({"start": index, "baseline": baseline}), flush=True)

    def report(outcome: str, detail: str, index: int, peak: int) -> None:
        print(json.dumps({"i": index, "outcome": outcome, "detail": detail, "peak": peak}), flush=True)

    run_format(fmt, n, seed, Path(folder), report, start, started)
    print(json.dumps({"done": True}), flush=True)


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def fuzz_format(fmt: str, n: int, seed: int, folder: Path, timeout: float) -> dict:
    """Run `n` mutations of `fmt` in child processes, watched: a case past `timeout` seconds is a
    hang, one past KILL_ABOVE over its baseline is killed and counted over 1 GiB, a child killed
    by a signal counts a signal for its case; a new child carries on after such a case."""
    counts: Counter = Counter()
    examples: dict[str, str] = {}
    peak, start = 0, 0
    while start < n:
        command = [sys.executable, "-m", "medclip_nb.tools.fuzz", "--child", fmt, "--n", str(n), "--seed", str(seed),
                   "--folder", str(folder), "--start", str(start)]
        errors_file = folder / f"child-{fmt}-{start}.err"
        with open(errors_file, "w") as child_errors:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=child_errors, text=True,
                                    env={**os.environ, "TQDM_DISABLE": "1"})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        current, since, baseline, finished, killed = None, time.monotonic(), 0, False, ""
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if line is None:
                break
            row = json.loads(line) if line.strip().startswith("{") else {}
            if "start" in row:
                current, since, baseline = row["start"], time.monotonic(), row["baseline"]
            elif "i" in row:
                counts[row["outcome"]] += 1
                peak = max(peak, row["peak"])
                if row["outcome"] not in GOOD:
                    examples.setdefault(row["outcome"], f"#{row['i']}: {row['detail']}")
                current = None
            elif row.get("done"):
                finished = True
            if current is not None and not killed:
                if time.monotonic() - since > timeout:
                    killed = "hang"
                elif _status("VmRSS", proc.pid) - baseline > KILL_ABOVE:
                    killed = "over 1 GiB"
                if killed:
                    proc.kill()
        proc.wait()
        if finished and proc.returncode == 0:
            break
        # Killed by the watchdog, by a signal (a native crash), or an exception outside any case's handling.
        outcome = killed or ("signal" if proc.returncode < 0 else "traceback")
        counts[outcome] += 1
        where = current if current is not None else start
        tail = " ".join(errors_file.read_text(errors="replace").split()[-40:])
        examples.setdefault(outcome, f"#{where}: {'killed by the watchdog' if killed else f'exit {proc.returncode}'} "
                                     f"{tail[-300:]}")
        start = where + 1
    return {"format": fmt, "counts": counts, "peak_mib": peak / 2**20, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medclip_nb.tools.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="mutations per kind of input (default: 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"kinds of input (default: {','.join(FORMATS)})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one case may run (default: 120)")
    parser.add_argument("--folder", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.n, args.seed, args.folder, args.start)
        return 0
    with tempfile.TemporaryDirectory(prefix="medclip-fuzz-") as tmp:
        folder = Path(args.folder or tmp)
        make_seeds(folder / "seeds")  # once, before the children (the checkpoints are short training runs)
        print(f"{'kind':11s} {'n':>5s} " + " ".join(f"{o:>14s}" for o in OUTCOMES) + f" {'peak MiB':>9s} {'s':>5s}")
        failures = 0
        for fmt in args.formats.split(","):
            started = time.perf_counter()
            result = fuzz_format(fmt, args.n, args.seed, folder, args.timeout)
            counts = result["counts"]
            failures += sum(counts[o] for o in OUTCOMES if o not in GOOD)
            print(f"{fmt:11s} {args.n:5d} " + " ".join(f"{counts[o]:14d}" for o in OUTCOMES)
                  + f" {result['peak_mib']:9.0f} {time.perf_counter() - started:5.0f}", flush=True)
            for outcome, example in result["examples"].items():
                print(f"    first {outcome}: {example}")
        print("peak MiB: the largest rise of one case's peak resident memory over its baseline; a case over "
              f"{MEMORY_LIMIT >> 20} MiB fails")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
