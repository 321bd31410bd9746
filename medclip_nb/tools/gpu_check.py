"""The figures and verdicts of `benchmarks/gpu_check.sh`, one JSON file per step, and the short
`summary.json` of them all: `python -m medclip_nb.tools.gpu_check COMMAND ...`.

    probe OUT                 python, torch and the device; refuses torch older than 2.4
    tests LOG OUT             pytest's counts from its last line
    resume REF RUN COPY LOG OUT RC MODE
                              a run killed at its first last.pth and resumed, against an
                              uninterrupted reference: the kill landed mid-run, the log holds each
                              step once, and the losses continue (CPU: to the last digit; CUDA:
                              within LOSS_TOLERANCE, as its kernels are not deterministic)
    ddp RUN OUT               a torchrun run's steps and losses (with the backend it used)
    summary OUT               every step's JSON in OUT -> OUT/summary.json (printed too)

Only the standard library and torch: it runs on a GPU machine's own python, where Jupyter's
packages are absent.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
from pathlib import Path
from typing import Any

LOSS_TOLERANCE = 0.02  # CUDA: the largest relative loss difference accepted between runs of one state
MIN_TORCH = (2, 4)


def write(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data))


def read_rows(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # the line a killed run was writing
    return rows


def train_losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_rows(path) if r.get("split") == "train"}


# ---- the steps ---------------------------------------------------------------------------------
def probe(out: str) -> int:
    import torch

    version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    cuda = torch.cuda.is_available()
    data = {"python": platform.python_version(), "torch": torch.__version__, "cuda": cuda,
            "torch_ok": version >= MIN_TORCH}
    if cuda:
        data.update(gpus=torch.cuda.device_count(), gpu=torch.cuda.get_device_name(0),
                    bf16=torch.cuda.is_bf16_supported(), cuda_version=torch.version.cuda,
                    nccl=torch.distributed.is_nccl_available())
    for name in ("torchvision", "nbformat", "papermill", "xdist", "open_clip"):
        try:
            module = __import__(name)
            data[name] = getattr(module, "__version__", "present")
        except ImportError:
            data[name] = None
    write(out, data)
    if not data["torch_ok"]:
        print(f"error: torch {torch.__version__} is older than {'.'.join(map(str, MIN_TORCH))}", file=sys.stderr)
        return 2
    return 0


def tests(log: str, out: str) -> int:
    """pytest's final counts ('3 failed, 400 passed, 5 skipped in 80.1s')."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    lines = [line for line in text.splitlines() if re.search(r"\b(passed|failed|error|skipped)\b", line)]
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped")}
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", lines[-1] if lines else ""):
        counts["errors" if word.startswith("error") else word] = int(number)
    counts["ok"] = bool(lines) and counts["passed"] > 0 and not counts["failed"] and not counts["errors"]
    counts["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)[:20]
    write(out, counts)
    return 0 if counts["ok"] else 1


def resume(reference: str, resumed: str, killed_copy: str, log: str, out: str, killed_rc: int, exact: bool) -> int:
    """Compare the killed-and-resumed run with the uninterrupted one (module docstring): `killed_copy`
    is the killed run's metrics.jsonl as it died, `log` the resumed run's console output and
    `killed_rc` the killed run's exit status (137: SIGKILL while it ran)."""
    import torch

    ref, run, before = (train_losses(Path(p)) for p in (Path(reference) / "metrics.jsonl",
                                                        Path(resumed) / "metrics.jsonl", killed_copy))
    checkpoint = Path(resumed) / "last.pth"
    data: dict[str, Any] = {"killed_rc": killed_rc, "killed_mid_run": killed_rc in (-9, 137) and bool(before),
                            "steps_before_kill": max(before, default=0), "reference_steps": max(ref, default=0)}
    data["resumed_from_step"] = resumed_from(Path(log))
    data["final_step"] = (torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["step"]
                          if checkpoint.is_file() else None)
    data["same_steps"] = sorted(run) == sorted(ref) and bool(ref)
    after = [s for s in sorted(run) if data["resumed_from_step"] is not None and s > data["resumed_from_step"]]
    data["steps_after_resume"] = len(after)
    data["max_rel_diff_vs_reference"] = max_rel_diff(run, ref, after)
    data["max_rel_diff_vs_killed_run"] = max_rel_diff(run, before, [s for s in after if s in before])
    limit = 0.0 if exact else LOSS_TOLERANCE
    data["criterion"] = "losses equal to the last digit" if exact else f"losses within {LOSS_TOLERANCE:.0%}"
    data["ok"] = bool(data["killed_mid_run"] and data["same_steps"] and after
                      and data["final_step"] == data["reference_steps"]
                      and data["max_rel_diff_vs_reference"] is not None
                      and data["max_rel_diff_vs_reference"] <= limit
                      and (data["max_rel_diff_vs_killed_run"] or 0.0) <= limit)
    write(out, data)
    return 0 if data["ok"] else 1


def resumed_from(log: Path) -> int | None:
    """The step in train()'s 'Resuming from ...: epoch E, step S' line."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = re.search(r"Resuming from .*?step (\d+)", text)
    return int(found.group(1)) if found else None


def max_rel_diff(a: dict[int, float], b: dict[int, float], steps: list[int]) -> float | None:
    diffs = [abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in steps if s in a and s in b]
    if any(math.isnan(d) for d in diffs):
        return math.inf
    return max(diffs) if diffs else None


def ddp(run: str, out: str, rc: int, backend: str, processes: int, note: str = "") -> int:
    losses = train_losses(Path(run) / "metrics.jsonl")
    data = {"rc": rc, "backend": backend, "processes": processes, "steps": max(losses, default=0),
            "first_loss": losses[min(losses)] if losses else None,
            "last_loss": losses[max(losses)] if losses else None, "note": note}
    data["ok"] = rc == 0 and bool(losses) and all(math.isfinite(v) for v in losses.values())
    write(out, data)
    return 0 if data["ok"] else 1


def bench_figures(path: Path) -> dict[str, Any] | None:
    """The headline figures of one `bench --json` file."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    rows = {name: {k: row.get(k) for k in ("pairs_per_s", "peak_memory_gib")}
            for name, row in report.get("results", {}).items()}
    return {"precision": report.get("precision"), "compile": report.get("config", {}).get("compile"),
            "batch": report.get("config", {}).get("batch_size"), "rows": rows, "ratios": report.get("ratios")}


def summary(out: str) -> int:
    folder = Path(out)
    steps = {}
    for name in ("device", "tests", "resume", "ddp", "nccl"):
        path = folder / f"{name}.json"
        steps[name] = json.loads(path.read_text()) if path.is_file() else None
    for name in ("bench_eager", "bench_compiled"):
        steps[name] = bench_figures(folder / f"{name}.json")
    timings = folder / "timings.json"
    steps["seconds"] = json.loads(timings.read_text()) if timings.is_file() else None
    steps["ok"] = {name: (value or {}).get("ok", value is not None) for name, value in steps.items()
                   if name not in ("device", "seconds")}
    write(folder / "summary.json", steps)
    return 0


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "probe":
        return probe(args[0])
    if command == "tests":
        return tests(args[0], args[1])
    if command == "resume":
        return resume(args[0], args[1], args[2], args[3], args[4], int(args[5]), exact=args[6] == "exact")
    if command == "ddp":
        return ddp(args[0], args[1], int(args[2]), args[3], int(args[4]), " ".join(args[5:]))
    if command == "summary":
        return summary(args[0])
    print(f"error: unknown command {command!r} (probe, tests, resume, ddp, summary)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
