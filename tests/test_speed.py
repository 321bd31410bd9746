"""Speed where it is spent (issue 29): CPU threads that leave the loader workers their cores, text
padded to the batch's longest, the CPU choices and their restoration, the benchmarks that show
them (bench-step, bench-train), the GPU check's verdicts and make study's phase times."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from medclip_nb import runtime
from medclip_nb.config import from_dict
from medclip_nb.data.dataset import BatchCollator, make_collate
from medclip_nb.data.unpaired import UnpairedBatches
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.model.encoders import TransformerTextEncoder
from medclip_nb.study.summary import read_phase_times, summary_markdown
from medclip_nb.text.tokenizers import CharTokenizer, SubwordTokenizer, pad_text, trim_padding
from medclip_nb.tools import gpu_check
from medclip_nb.tools.step_bench import run_step_bench
from medclip_nb.tools.train_bench import parse_setting, time_settings, window_pairs_per_s
from medclip_nb.train import train

REPORTS = ["no acute cardiopulmonary process.", "heart size is normal. small left pleural effusion with adjacent "
           "atelectasis. no pneumothorax. the mediastinum is unremarkable.", "lungs clear."]


def quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def subword() -> SubwordTokenizer:
    return SubwordTokenizer.train(REPORTS * 4, vocab_size=80, max_length=24)


# ---- CPU threads ---------------------------------------------------------------------------------
@pytest.fixture
def threads_kept(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, workers, processes, expected", [(2, 2, 1, 1), (8, 2, 1, 6), (16, 14, 1, 2),
                                                                 (2, 0, 1, 2), (2, 1, 2, 1), (16, 4, 2, 4)])
def test_threads_are_the_cores_left_by_the_loader_workers(threads_kept, monkeypatch, cores, workers, processes,
                                                          expected):
    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))  # torchrun's processes share the machine's cores
    words = runtime.set_cpu_threads(torch.device("cpu"), None, workers)
    assert torch.get_num_threads() == expected
    assert words == f"{expected} CPU thread(s): {cores // processes} cores - {workers} loader workers, at least 1"


def test_a_config_key_or_omp_num_threads_says_otherwise(threads_kept, monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 8)
    assert runtime.set_cpu_threads(torch.device("cpu"), 3, 2) == "3 CPU thread(s), config key cpu_threads"
    assert torch.get_num_threads() == 3
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.set_cpu_threads(torch.device("cpu"), None, 0) == "1 CPU thread(s), OMP_NUM_THREADS=1"
    assert torch.get_num_threads() == 1  # torch read it at start; left alone
    assert runtime.set_cpu_threads(torch.device("cuda"), None, 0) == ""  # a GPU run keeps torch's setting


def test_cpu_threads_key_is_checked():
    with pytest.raises(ConfigError, match="'cpu_threads': 0 is not allowed"):
        from_dict({"data_path": "x", "cpu_threads": 0})
    with pytest.raises(ConfigError, match="'text_padding'"):
        from_dict({"data_path": "x", "text_padding": "shortest"})


def test_train_says_its_threads_and_puts_the_callers_settings_back(tiny_dataset, tmp_path, threads_kept):
    torch.set_num_threads(2)
    torch.utils.deterministic.fill_uninitialized_memory = True
    lines: list[str] = []
    cfg = from_dict(dict(data_path=str(tiny_dataset), model_save_path=str(tmp_path), image_size=32, resize_size=48,
                         vision_backbone="small_cnn", text_layers=1, text_width=32, text_heads=2, embed_dim=32,
                         vocab_size=200, max_text_tokens=32, batch_size=4, eval_batch_size=8, max_steps=2,
                         num_workers=0, cpu_threads=1, gpu_id="cpu"))
    seen = {}

    def look(line):
        lines.append(line)
        if line.startswith("Training"):  # while training: the run's settings
            seen.update(threads=torch.get_num_threads(), fill=torch.utils.deterministic.fill_uninitialized_memory)

    train(cfg, log=look)
    assert any(line.startswith("Training... (2 steps: ") and line.endswith("; 1 CPU thread(s), config key cpu_threads)")
               for line in lines), lines
    assert seen == {"threads": 1, "fill": runtime.CPU_CHOICES.nan_fill}
    assert torch.get_num_threads() == 2 and torch.utils.deterministic.fill_uninitialized_memory is True
    assert not torch.are_deterministic_algorithms_enabled()


def test_nccl_needs_a_gpu_per_process_gloo_shares_one(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="'dist_backend': torchrun started local rank 1 on a machine with 1 GPU"):
        runtime.start_distributed("0", quiet, "auto")


# ---- text padded to the longest of the batch ----------------------------------------------------------
def test_collate_pads_to_the_longest_text_unless_told_otherwise(subword):
    samples = [{"pixel_values": torch.zeros(3, 4, 4), "report": r, "labels": torch.zeros(14), "index": i}
               for i, r in enumerate(REPORTS[::2])]
    full = subword.encode([s["report"] for s in samples])
    longest = make_collate(subword)(samples)
    width = int(full["attention_mask"].sum(1).max())
    assert 2 < width < subword.max_length and longest["input_ids"].shape == (2, width)
    assert torch.equal(longest["input_ids"], full["input_ids"][:, :width])
    fixed = make_collate(subword, from_dict({"data_path": "x", "text_padding": "max_length"}))(samples)
    assert fixed["input_ids"].shape == (2, subword.max_length)
    # auto: fixed shapes under torch.compile (no recompiles for each new length)
    assert make_collate(subword, from_dict({"data_path": "x", "compile": True})).pad_to_longest is False
    chars = BatchCollator(CharTokenizer())(samples)  # the seed's model reads exactly 50 codes
    assert chars["input_ids"].shape == (2, 50)


def test_an_embedding_does_not_depend_on_the_padding(subword):
    torch.manual_seed(0)
    encoder = TransformerTextEncoder(subword.vocab_size, width=32, layers=2, heads=2, max_length=24, embed_dim=16)
    encoder.eval()
    full = subword.encode(REPORTS[::2])
    trimmed = trim_padding(full, subword)
    assert trimmed["input_ids"].shape[1] < full["input_ids"].shape[1]
    with torch.no_grad():
        assert torch.allclose(encoder(**full), encoder(**trimmed), atol=1e-5)


def test_unpaired_texts_join_a_batch_of_another_width(subword):
    class Texts:
        def __len__(self):
            return 3

        def __getitem__(self, key):
            return {"report": REPORTS[1], "labels": torch.zeros(14), "index": 0}

    batch = trim_padding(subword.encode([REPORTS[2]] * 2), subword)  # a short batch
    batch = {**batch, "pixel_values": torch.zeros(2, 3, 4, 4), "labels": torch.zeros(2, 14), "n_skipped": 0,
             "skipped_paths": []}
    out = UnpairedBatches(None, Texts(), subword, per_batch=2, seed=0).extend(batch, epoch=0, step=0)
    long = int(subword.encode([REPORTS[1]])["attention_mask"].sum())
    assert out["input_ids"].shape == out["attention_mask"].shape == (4, long)
    assert out["attention_mask"][:2].sum(1).tolist() == batch["attention_mask"].sum(1).tolist()
    assert torch.equal(pad_text(batch, long, 0)["input_ids"], out["input_ids"][:2])


# ---- benchmarks ------------------------------------------------------------------------------------
def test_bench_train_reads_pairs_per_second_of_the_rows_after_the_warmup():
    history = [{"split": "train", "step": 2, "pairs_per_s": 1.0}, {"split": "val", "step": 2},
               {"split": "train", "step": 4, "pairs_per_s": 8.0}, {"split": "train", "step": 6, "pairs_per_s": 4.0}]
    rate, steps = window_pairs_per_s(history, batch_pairs=4, warmup=2)
    assert steps == 4 and rate == pytest.approx(16 / (8 / 8 + 8 / 4))
    assert parse_setting("new:num_workers=0, cpu_threads=2") == ("new", {"num_workers": 0, "cpu_threads": 2})
    with pytest.raises(ConfigError, match="--settings: 'fast'"):
        parse_setting("fast")


def test_bench_train_runs_old_and_new_side_by_side(tiny_dataset, tmp_path, threads_kept):
    cfg = from_dict(dict(data_path=str(tiny_dataset), image_size=32, resize_size=48, vision_backbone="small_cnn",
                         text_layers=1, text_width=32, text_heads=2, embed_dim=32, vocab_size=200,
                         max_text_tokens=32, batch_size=4, eval_batch_size=8, num_workers=0, log_every=1,
                         gpu_id="cpu"))
    rows = time_settings(cfg, ["old", "new:cpu_threads=1"], steps=4, warmup=1, rounds=1, folder=tmp_path)
    assert [r["setting"] for r in rows] == ["old", "new:cpu_threads=1"]
    assert all(r["pairs_per_s"][0] > 0 for r in rows) and rows[0]["ratio_median"] == 1.0
    assert rows[0]["threads"].endswith("torch's own count") and rows[1]["threads"].startswith("1 CPU")
    assert runtime.CPU_CHOICES == runtime.CpuChoices()  # the old setting's choices were put back


def test_bench_step_times_ours_open_clip_and_the_gemm_rate(threads_kept, capsys):
    pytest.importorskip("open_clip_train")
    tiny = dict(data_path="x", model="medclip", vision_backbone="resnet18", image_size=32, resize_size=36,
                text_layers=1, text_width=32, text_heads=2, embed_dim=32, vocab_size=100, max_text_tokens=16,
                batch_size=4)
    study = {**tiny, "vision_backbone": "small_cnn"}
    report = run_step_bench(from_dict(tiny), from_dict(study), steps=1, rounds=1)
    rows = {(r["name"], r["threads"]): r for r in report["rows"]}
    ours, theirs = rows[("ours", 1)], rows[("open_clip (same network)", 1)]
    # The same network: FLOPs per step within a few per cent (timm's resnet18 is torchvision's).
    assert theirs["gflop_per_step"] == pytest.approx(ours["gflop_per_step"], rel=0.1)
    assert 0 < ours["gemm_fraction"] and ours["pairs_per_s"] > 0
    assert set(report["ratios"]) >= {"ours_over_open_clip_1_thread", "study model the NaN fill",
                                     "study model dropout off"}
    assert "ours / open_clip, pairs/s" in capsys.readouterr().out
    assert runtime.CPU_CHOICES == runtime.CpuChoices()


# ---- the GPU check's verdicts -----------------------------------------------------------------------
def _rows(path: Path, losses: dict[int, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "split": "train", "loss": v}) + "\n" for s, v in losses.items())
                    + '{"step": 9, "spl')  # a line cut short by the kill


def test_gpu_check_resume_verdict(tmp_path):
    losses = {s: 3.0 - 0.1 * s for s in range(1, 9)}
    _rows(tmp_path / "ref" / "metrics.jsonl", losses)
    _rows(tmp_path / "run" / "metrics.jsonl", losses)
    _rows(tmp_path / "killed.jsonl", {s: losses[s] for s in range(1, 5)})
    torch.save({"step": 8}, tmp_path / "run" / "last.pth")
    (tmp_path / "log").write_text("Resuming from /x/last.pth: epoch 1, step 3, batch 3 of 4\n")
    args = [str(tmp_path / p) for p in ("ref", "run", "killed.jsonl", "log", "resume.json")]
    assert gpu_check.resume(*args, killed_rc=137, exact=True) == 0
    verdict = json.loads((tmp_path / "resume.json").read_text())
    assert verdict["ok"] and verdict["resumed_from_step"] == 3 and verdict["steps_after_resume"] == 5
    _rows(tmp_path / "run" / "metrics.jsonl", {**losses, 6: losses[6] * 1.01})
    assert gpu_check.resume(*args, killed_rc=137, exact=True) == 1  # CPU: to the last digit
    assert gpu_check.resume(*args, killed_rc=137, exact=False) == 0  # CUDA: within LOSS_TOLERANCE
    assert gpu_check.resume(*args, killed_rc=0, exact=False) == 1  # finished before the kill: no check


def test_gpu_check_reads_pytest_counts_and_sums_up(tmp_path):
    (tmp_path / "tests.log").write_text("....F.s\nFAILED tests/test_x.py::test_y - boom\n"
                                        "1 failed, 405 passed, 6 skipped, 2 warnings in 80.1s\n")
    assert gpu_check.tests(str(tmp_path / "tests.log"), str(tmp_path / "tests.json")) == 1
    counts = json.loads((tmp_path / "tests.json").read_text())
    assert counts["passed"] == 405 and counts["failed"] == 1 and counts["skipped"] == 6 and not counts["ok"]
    assert counts["failures"] == ["tests/test_x.py::test_y"]
    (tmp_path / "bench_eager.json").write_text(json.dumps({"precision": "bfloat16", "config": {"compile": False},
                                                           "results": {"model_only": {"pairs_per_s": 2800.0}}}))
    gpu_check.summary(str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["bench_eager"]["rows"]["model_only"]["pairs_per_s"] == 2800.0
    assert summary["ok"]["tests"] is False and summary["bench_compiled"] is None


# ---- make study's phase times ---------------------------------------------------------------------
def test_phase_times_go_into_the_summary(tmp_path):
    (tmp_path / "phases.tsv").write_text("phantom\t45.0\nprepare\t3.0\n03_pretrain\t120.0\nbroken line\n")
    phases = read_phase_times(tmp_path / "phases.tsv")
    assert phases == [("phantom", 45.0), ("prepare", 3.0), ("03_pretrain", 120.0)]
    text = summary_markdown({}, wall_seconds=240.0, phases=phases)
    assert "## Where the time went" in text and "| 03_pretrain | 2.00 | 50% |" in text
    assert read_phase_times(None) == [] and "Where the time" not in summary_markdown({})
    with pytest.raises(DataError, match="--phase-times .*missing.tsv: no such file"):
        read_phase_times(tmp_path / "missing.tsv")


def test_summary_refuses_a_named_phase_times_file_that_is_missing(tmp_path, run_cli):
    (tmp_path / "metrics.json").write_text("{}")
    rc, err = run_cli(["summary", "--metrics", tmp_path / "metrics.json", "--out", tmp_path / "summary.md",
                       "--phase-times", tmp_path / "nope.tsv"])
    assert rc == 2 and err.count("error:") == 1 and "nope.tsv: no such file" in err
    assert not (tmp_path / "summary.md").exists()


def test_data_command_writes_its_phase_times(tmp_path):
    from medclip_nb.cli import main

    phases = tmp_path / "phases.tsv"
    phases.write_text("earlier\t1.0\n")
    assert main(["data", "--phantom_dir", str(tmp_path / "p"), "--phantom_studies", "24", "--phantom_size", "32",
                 "--data_path", str(tmp_path / "d" / "datasets.pkl"), "--image_store", "auto", "--resize_size", "224",
                 "--phase-times", str(phases)]) == 0
    assert [name for name, _ in read_phase_times(phases)] == ["earlier", "phantom", "prepare", "image store"]
    assert os.path.getsize(phases) > 0
