"""Issue 26: model files and outputs that cannot be trusted. Model files are data (sizes checked
before allocation, run-time keys never taken from them), exports are checksummed and checked
like checkpoints, every reader ends in one line, resume does what it prints, one run per folder,
no user file replaced without --force, bounded memory, and no success without a result."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medclip_nb.config import from_dict
from medclip_nb.config_load import load_config
from medclip_nb.data import load_dataset_file, load_grayscale
from medclip_nb.errors import CheckpointError, ConfigError, DataError, TrainingError, UserError
from medclip_nb.files import read_limited
from medclip_nb.model import load_model
from medclip_nb.model.export import load_export
from medclip_nb.tools import fuzz

quiet = lambda *a, **k: None  # noqa: E731


def _peak_rise(work) -> tuple[object, int]:
    """(result or raised exception, rise of the peak resident memory over the start, bytes)."""
    fuzz._reset_peak()
    start = fuzz._status("VmRSS")
    try:
        result = work()
    except Exception as e:  # noqa: BLE001 - the caller checks it
        result = e
    return result, fuzz._status("VmHWM") - start


def _resave(source: Path, target: Path, change) -> Path:
    state = torch.load(source, weights_only=True)
    change(state)
    torch.save(state, target)
    return target


def _copy_export(seeds, tmp_path) -> Path:
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(seeds["export"], folder)
    return folder


def _rehash(folder: Path) -> None:
    names = sorted(p.name for p in folder.iterdir() if p.name != "SHA256SUMS")
    (folder / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names))


# ---- 1. model files are data ---------------------------------------------------------------------
def test_a_small_checkpoint_asking_for_a_huge_model_is_refused_before_allocating(seeds, tmp_path):
    def huge(state):
        for key in set(state) - {"model", "config", "tokenizer"}:  # what load_model reads
            del state[key]
        state["config"].update(text_width=16384, text_layers=128)  # inside the key table's bounds
        state["notes"] = "x" * (9_000_000 - sum(t.numel() * t.element_size() for t in state["model"].values()))

    path = _resave(seeds["checkpoint_medclip"], tmp_path / "huge.pth", huge)
    assert 9e6 < path.stat().st_size < 9.5e6
    started = time.perf_counter()
    error, rise = _peak_rise(lambda: load_model(path))
    assert isinstance(error, CheckpointError) and "over the limit" in str(error) and "parameters" in str(error)
    assert rise < 300 * 2**20 and time.perf_counter() - started < 30  # the 1.6 TB model never existed


def test_a_model_file_never_sets_run_time_keys(seeds, tmp_path, run_cli):
    from medclip_nb.inference import load_pretrained

    path = _resave(seeds["checkpoint"], tmp_path / "greedy.pth",
                   lambda s: s["config"].update(num_workers=256, eval_batch_size=65536, on_bad_image="error",
                                                data_path="/dev/zero"))
    pretrained = load_pretrained(path, "cpu")
    defaults = from_dict({"data_path": "x"})
    assert (pretrained.config.num_workers, pretrained.config.eval_batch_size, pretrained.config.on_bad_image) == \
        (defaults.num_workers, defaults.eval_batch_size, defaults.on_bad_image)
    # An export's config.json may hold model keys only.
    folder = _copy_export(seeds, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["num_workers"] = 256
    (folder / "config.json").write_text(json.dumps(config))
    _rehash(folder)
    with pytest.raises(CheckpointError, match="'num_workers' is not a model key"):
        load_export(folder)
    # evaluate reads the data the user names, never the checkpoint's data_path.
    rc, err = run_cli(["evaluate", "--checkpoint", path, "--out", tmp_path / "reports"])
    assert rc == 2 and "--data_path is required" in err


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_files_a_model_names_are_regular_files_under_a_limit(seeds, tmp_path, target):
    if target == "fifo":
        target = tmp_path / "features.json"
        os.mkfifo(target)

    def precomputed(state):
        state["config"].update(text_encoder="precomputed", text_features_path=str(target))
        state["tokenizer"] = json.dumps({"kind": "clip_indices", "pad_id": -1})

    path = _resave(seeds["checkpoint_medclip"], tmp_path / "named.pth", precomputed)
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"text_features_path .*not a regular file"):
        load_model(path)
    assert time.perf_counter() - started < 10  # no hang on the FIFO, no read of /dev/zero


@pytest.mark.parametrize("change, message", [
    (lambda d: d["truncation"].update(max_length=2**31), "not in 2..8192"),
    (lambda d: d["truncation"].update(max_length=15), "cuts texts at 15 tokens"),
    (lambda d: d["post_processor"].update(single=[{"Sequence": {"id": "B", "type_id": 0}}]), "post_processor"),
    (lambda d: d["model"]["vocab"].update(zzz=2**31), "ids 0..n-1"),
    (lambda d: d.update(normalizer=None), "normalizer"),
])
def test_stored_tokenizers_are_data_checked_before_the_rust_library_sees_them(seeds, tmp_path, change, message):
    def edit(state):
        data = json.loads(state["tokenizer"])
        change(data)
        state["tokenizer"] = json.dumps(data)

    path = _resave(seeds["checkpoint_medclip"], tmp_path / "tok.pth", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_tokenizer_json_that_python_cannot_parse_is_one_line(seeds, tmp_path):
    deep = '{"model": ' + "[" * 100000 + "]" * 100000 + "}"
    digits = '{"kind": "char", "max_length": ' + "9" * 5000 + "}"
    for text in (deep, digits):
        path = _resave(seeds["checkpoint_medclip"], tmp_path / "tok.pth", lambda s, t=text: s.update(tokenizer=t))
        with pytest.raises(CheckpointError, match="tokenizer"):
            load_model(path)


def test_a_bert_folder_a_model_names_holds_regular_files_only(tmp_path):
    from medclip_nb.text import local_hf_folder

    (tmp_path / "config.json").write_text("{}")
    os.mkfifo(tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=r"bert_path .*model.safetensors: not a regular file"):
        local_hf_folder(tmp_path)


def test_a_native_panic_in_a_library_reading_a_named_folder_is_one_line(tmp_path):
    from medclip_nb.text import from_local_folder

    class PanicException(BaseException):  # what pyo3 raises for a Rust panic: not an Exception
        pass

    class Panicking:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            raise PanicException("index out of bounds: the len is 1 but the index is 1")

    with pytest.raises(UserError, match=r"bert_path .*cannot load a tokenizer from it \(index out of bounds"):
        from_local_folder(Panicking, tmp_path, "a tokenizer")


def test_an_evaluation_batch_over_the_memory_limit_is_refused_before_any_image(seeds, tmp_path, run_cli):
    path = _resave(seeds["checkpoint_medclip"], tmp_path / "big_images.pth",
                   lambda s: s["config"].update(image_size=4096, resize_size=4096))  # a valid, 4096-px model
    rc, err = run_cli(["embed", "--checkpoint", path, "--data_path", seeds["pickle"], "--out", tmp_path / "e.npz",
                       "--eval_batch_size", 64])
    assert rc == 2 and "over the limit of 16.0 GiB; lower --eval_batch_size" in err
    assert not (tmp_path / "e.npz").exists()


# ---- 2. exports checked like checkpoints -----------------------------------------------------------
def test_an_export_with_one_flipped_bit_is_refused(seeds, tmp_path):
    folder = _copy_export(seeds, tmp_path)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[len(weights) // 2] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match=r"model.safetensors: its SHA-256 differs"):
        load_export(folder)
    folder = _copy_export(seeds, tmp_path / "again")
    (folder / "pytorch_model.bin").write_bytes(b"not ours")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: not listed in SHA256SUMS"):
        load_export(folder)


def test_an_export_with_an_edited_text_heads_is_refused_with_or_without_new_checksums(seeds, tmp_path):
    folder = _copy_export(seeds, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["text_heads"] == 2
    config["config"]["text_heads"] = 4  # no weight changes shape: only the checks can see it
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: its SHA-256 differs"):
        load_export(folder)
    _rehash(folder)
    with pytest.raises(CheckpointError, match=r"'text_heads' is 4, the weights were exported with 2"):
        load_export(folder)


@pytest.mark.parametrize("change, message", [
    (lambda t, k: t.update({k: t[k].to(torch.int64)}), "is torch.int64"),
    (lambda t, k: t.update({k: torch.full_like(t[k], float("nan"))}), "NaN or infinite"),
    (lambda t, k: t.pop(k), "lacks weight"),
    (lambda t, k: t.update(extra=torch.zeros(2)), "holds weight 'extra'"),
])
def test_export_weights_are_checked_for_dtype_shape_and_finite_values(seeds, tmp_path, change, message):
    from safetensors.torch import load_file, safe_open, save_file

    folder = _copy_export(seeds, tmp_path)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors, "vision_projection.weight")
    save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
    _rehash(folder)
    with pytest.raises(CheckpointError, match=message):
        load_export(folder)


def test_an_export_is_all_files_or_none_and_says_no_space_left(seeds, tmp_path, monkeypatch):
    from medclip_nb.model import export_checkpoint

    out = tmp_path / "export"
    real = Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".model.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(CheckpointError, match="no space left on device"):
        export_checkpoint(seeds["checkpoint_medclip"], out)
    assert not out.exists() and not list(tmp_path.glob(".export*"))


# ---- 3. one line for every failure ---------------------------------------------------------------------
@pytest.mark.parametrize("name, data, expected", [
    ("latin1.yaml", b"Edema: [caf\xe9]\n", "not UTF-8"),
    ("deep.yaml", b"Edema: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    ("bomb.yaml", ("Edema: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)) + "]\n").encode(), "prompt"),
    ("numbers.yaml", b"Edema: [1, 2]\n", "holds 1"),
    ("big.yaml", b"Edema: [" + b"x, " * 600_000 + b"x]\n", "over the limit"),
])
def test_prompt_files_are_read_like_config_files(seeds, tmp_path, run_cli, name, data, expected):
    (tmp_path / name).write_bytes(data)
    started = time.perf_counter()
    rc, err = run_cli(["predict", "--checkpoint", seeds["checkpoint"], seeds["image"], "--prompts", tmp_path / name])
    assert rc == 2 and err.startswith("error: --prompts") and "\n" not in err and expected in err
    assert time.perf_counter() - started < 60


def test_summary_reads_any_metrics_json_into_one_line_and_never_replaces_a_user_file(tmp_path, run_cli):
    metrics = tmp_path / "metrics.json"
    for wrong in ({"default": {"zero_shot_5x200": [1, 2]}}, {"ablation": {"paired": 5}},
                  {"ablation": {"summary": {"clip": {"zs_acc_mean": {"mean": "a", "std": 1}}}}}):
        metrics.write_text(json.dumps(wrong))
        rc, err = run_cli(["summary", "--metrics", metrics, "--out", tmp_path / "summary.md"])
        assert rc == 2 and err.startswith("error: ") and "metrics.json" in err and "\n" not in err
    metrics.write_text(json.dumps({}))
    rc, err = run_cli(["summary", "--metrics", metrics, "--out", metrics, "--force"])
    assert rc == 2 and "is the command's input" in err and json.loads(metrics.read_text()) == {}
    mine = tmp_path / "notes.md"
    mine.write_text("my notes")
    rc, err = run_cli(["summary", "--metrics", metrics, "--out", mine])
    assert rc == 2 and "--force" in err and mine.read_text() == "my notes"
    ours = tmp_path / "summary.md"
    assert run_cli(["summary", "--metrics", metrics, "--out", ours])[0] == 0
    assert run_cli(["summary", "--metrics", metrics, "--out", ours])[0] == 0  # its own file: replaced
    assert run_cli(["summary", "--metrics", metrics, "--out", mine, "--force"])[0] == 0


def test_write_atomic_under_a_file_reports_the_real_error(tmp_path):
    from medclip_nb.files import write_text_atomic

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file/out.txt: cannot be written"):
        write_text_atomic(tmp_path / "file" / "out.txt", "text")


def test_outputs_are_checked_before_the_work(seeds, tmp_path, run_cli):
    (tmp_path / "file").write_text("x")
    rc, err = run_cli(["evaluate", "--checkpoint", seeds["checkpoint"], "--out", tmp_path / "file",
                       "--data_path", seeds["pickle"]])
    assert rc == 2 and "is a file" in err
    rc, err = run_cli(["embed", "--checkpoint", seeds["checkpoint"], "--data_path", seeds["pickle"],
                       "--out", tmp_path / "file" / "e.npz"])
    assert rc == 2 and "is a file, not a folder" in err


def test_store_links_and_index_of_the_wrong_form_are_one_line(tmp_path):
    from medclip_nb.data import ImageStore

    store = tmp_path / "store"
    store.mkdir()
    os.symlink("current", store / "current")  # a link to itself
    with pytest.raises(DataError, match="'current' link leads nowhere"):
        ImageStore.open(store)


def test_store_index_of_the_wrong_types_is_one_line(tmp_path):
    from medclip_nb.data import ImageStore

    build = tmp_path / "store" / "builds" / "b1"
    build.mkdir(parents=True)
    (build / "index.json").write_text(json.dumps({"meta": {"version": 2, "source": 5, "size": 16, "count": 1}}))
    os.symlink("builds/b1", tmp_path / "store" / "current")
    with pytest.raises(DataError, match="meta 'source' / 'image_root' are not paths"):
        ImageStore.open(tmp_path / "store")


def test_a_small_store_is_checked_whole_on_every_open(seeds, tmp_path):
    from medclip_nb.data import ImageStore, build_store
    from medclip_nb.data.store import StoreIntegrityError, current_build

    folder = build_store(seeds["pickle"], tmp_path / "store", size=16, num_workers=0)
    images = current_build(folder) / "images.u8"
    data = bytearray(images.read_bytes())
    data[-1] ^= 0xFF  # one pixel of the last row
    images.write_bytes(bytes(data))
    for _ in range(5):  # a sample of 64 rows could miss it; a store this small is hashed whole
        with pytest.raises(StoreIntegrityError, match="differ from what the build wrote"):
            ImageStore.open(folder, expected_source=seeds["pickle"], expected_size=16)


def test_csv_ids_that_only_look_like_digits_load(tmp_path):
    (tmp_path / "m.csv").write_text("split,image_path,report,labels,study_id\ntrain,a.png,x,1;0,\u00b2\n")
    records = load_dataset_file(tmp_path / "m.csv")
    assert records["train"][0]["study_id"] == "\u00b2"


def test_predict_walks_a_thousand_deep_folder(seeds, tmp_path, run_cli):
    deep = tmp_path / "deep"
    current = deep
    current.mkdir()
    for _ in range(1100):
        current = current / "d"
        current.mkdir()
    try:
        rc, err = run_cli(["predict", "--checkpoint", seeds["checkpoint"], deep])
        assert rc == 2 and err.startswith("error: ") and "\n" not in err
    finally:  # bottom up: pytest's own clean-up of tmp_path recurses and would overflow
        while current != tmp_path:
            current.rmdir()
            current = current.parent


# ---- 4. resume that does what it says ------------------------------------------------------------------
def _cfg(seeds, out, yaml="yaml", **changes):
    values = load_config(seeds[yaml]).to_dict()
    values.update(model_save_path=str(out), log_every=1, eval_steps=100, save_steps=100, **changes)
    return from_dict(values)


def test_lr_and_weight_decay_on_resume_are_applied(seeds, tmp_path):
    from medclip_nb.train import train
    from medclip_nb.train.step import warmup_cosine

    train(_cfg(seeds, tmp_path / "run", max_steps=2, num_epochs=4, warmup=0.0), log=quiet)
    lines: list[str] = []
    resumed = _cfg(seeds, tmp_path / "run", max_steps=4, num_epochs=4, warmup=0.0, lr=1e-2, weight_decay=0.5,
                   resume_from="latest")
    result = train(resumed, log=lines.append)
    rows = [r for r in result.history if r["split"] == "train" and r["step"] > 2]
    assert [r["lr"] for r in rows] == pytest.approx([1e-2 * warmup_cosine(s - 1, 0, 4) for s in (3, 4)])
    assert any("Applied from this step on: lr 0.0001 -> 0.01, weight_decay 0.0001 -> 0.5" in line for line in lines)
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.5
    assert state["optimizer"]["param_groups"][1]["weight_decay"] == 0.0


def test_a_complete_run_is_already_complete_and_a_changed_tokenizer_is_refused(seeds, tmp_path):
    from medclip_nb.train import train

    train(_cfg(seeds, tmp_path / "run", yaml="yaml_medclip", max_steps=2), log=quiet)
    again = _cfg(seeds, tmp_path / "run", yaml="yaml_medclip", max_steps=2, resume_from="latest")
    with pytest.raises(TrainingError, match=r"already complete \(step 2 of 2.*--allow_complete"):
        train(again, log=quiet)
    lines: list[str] = []
    result = train(again.replace(allow_complete=True), log=lines.append)
    assert result.steps == 2 and any("already complete" in line for line in lines)
    shorter = again.replace(max_steps=3, max_text_tokens=12)
    with pytest.raises(CheckpointError, match="cuts texts at 16 tokens, config key 'max_text_tokens' is 12"):
        train(shorter, log=quiet)


# ---- 5. one run per folder -------------------------------------------------------------------------
def test_a_second_run_into_a_locked_folder_is_refused(seeds, tmp_path):
    from medclip_nb.train import train

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from medclip_nb.runtime import World; "
                               "from medclip_nb.train.state import RunLock; RunLock(Path(sys.argv[1]), World()); "
                               "print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = rf"{re.escape(str(out))} is in use by another run \(process {holder.pid}\)"
        with pytest.raises(ConfigError, match=refused):
            train(_cfg(seeds, out, max_steps=1), log=quiet)
        assert not (out / "last.pth").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    train(_cfg(seeds, out, max_steps=1), log=quiet)  # the dead holder's lock went with it
    assert (out / "last.pth").is_file()


def test_a_lock_kept_by_an_orphaned_worker_of_a_killed_run_is_waited_for(tmp_path):
    """kill -9 of a run leaves its forked loader workers holding the lock's open file for a few
    seconds: the next run (resume right after a kill) waits for them instead of being refused."""
    from medclip_nb.runtime import World
    from medclip_nb.train.state import LOCK_FILE, RunLock

    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer exists: the killed run's
    (out / LOCK_FILE).write_text(f"{gone.pid}\n")
    worker = subprocess.Popen(  # the orphaned worker: holds the flock for 1.5 s, then exits
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)",
         str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "held"
        started = time.monotonic()
        lock = RunLock(out, World())  # waits for the worker instead of refusing
        assert lock.fd is not None and 0.5 < time.monotonic() - started < 15
        lock.release()
    finally:
        worker.kill()
        worker.wait()


# ---- 6. never replace a user's file ------------------------------------------------------------------
def test_predict_csv_onto_an_existing_file_is_refused(seeds, tmp_path, run_cli):
    mine = tmp_path / "table.csv"
    mine.write_text("mine")
    rc, err = run_cli(["predict", "--checkpoint", seeds["checkpoint"], seeds["image"], "--csv", mine])
    assert rc == 2 and "exists and is not replaced without --force" in err and mine.read_text() == "mine"
    before = seeds["checkpoint"].read_bytes()
    rc, err = run_cli(["predict", "--checkpoint", seeds["checkpoint"], seeds["image"], "--csv", seeds["checkpoint"],
                       "--force"])
    assert rc == 2 and "is the command's input" in err and seeds["checkpoint"].read_bytes() == before
    rc, _ = run_cli(["predict", "--checkpoint", seeds["checkpoint"], seeds["image"], "--csv", mine, "--force"])
    assert rc == 0 and mine.read_text().startswith("image,")


def test_embed_and_export_never_replace_a_users_files(seeds, tmp_path, run_cli):
    mine = tmp_path / "mine.npz"
    mine.write_bytes(b"mine")
    rc, err = run_cli(["embed", "--checkpoint", seeds["checkpoint"], "--data_path", seeds["pickle"], "--out", mine])
    assert rc == 2 and "--force" in err and mine.read_bytes() == b"mine"
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["BertModel"]}')
    rc, err = run_cli(["export", "--checkpoint", seeds["checkpoint"], "--out", hf])
    assert rc == 2 and "--force" in err and json.loads((hf / "config.json").read_text())["architectures"]
    # An earlier export is the project's own folder: replaced without --force.
    assert run_cli(["export", "--checkpoint", seeds["checkpoint"], "--out", tmp_path / "e"])[0] == 0
    assert run_cli(["export", "--checkpoint", seeds["checkpoint_medclip"], "--out", tmp_path / "e"])[0] == 0
    assert load_export(tmp_path / "e")[2].model == "medclip"


def test_phantom_force_deletes_only_the_files_it_wrote(tmp_path, run_cli):
    from medclip_nb.phantom import generate_phantom

    out = tmp_path / "phantom"
    generate_phantom(out, studies=6, size=32, seed=0)
    listed = (out / "phantom_files.sha256").read_text().splitlines()
    assert len(listed) == len([p for p in out.rglob("*") if p.is_file()]) - 2  # all but the listing and phantom.json
    report = next(out.rglob("s*.txt"))
    mine = report.with_name("s99999999.txt")  # a user's file with a MIMIC-CXR-style name
    mine.write_text("my report")
    base = ["phantom", "--out", out, "--studies", 5, "--size", 32, "--force"]
    rc, err = run_cli(base)
    assert rc == 2 and "s99999999.txt" in err and mine.read_text() == "my report" and report.is_file()
    mine.unlink()
    report.write_text("edited by hand")
    rc, err = run_cli(base)
    assert rc == 2 and "changed since the generator wrote it" in err and report.read_text() == "edited by hand"
    report.unlink()
    rc, _ = run_cli(base)
    assert rc == 0 and len(list(out.rglob("*.jpg"))) >= 5


# ---- 7. bounded memory -------------------------------------------------------------------------------
@pytest.mark.parametrize("blob, expected", [
    (b"\x80\x02" + b"}" * 3_000_000 + b".", "bytes of memory per byte"),
    (pickle.dumps({"train": ["x" * 1000] * 200_000}, protocol=4), "shared references expanded"),
])
def test_the_unpickler_is_bounded_per_input_byte(tmp_path, blob, expected):
    (tmp_path / "d.pkl").write_bytes(blob)
    error, rise = _peak_rise(lambda: load_dataset_file(tmp_path / "d.pkl"))
    assert isinstance(error, DataError) and expected in str(error)
    assert rise < 60 * len(blob) + 200 * 2**20


def test_large_16_bit_and_rgba_images_decode_in_bounded_memory(tmp_path):
    from medclip_nb.tools.fuzz_inputs import _png

    side = 6000  # 36 megapixels, under the limit
    (tmp_path / "i16.png").write_bytes(_png(side, side, 16, 0, bytes(1 + 2 * side), side))
    (tmp_path / "rgba.png").write_bytes(_png(side, side, 8, 6, bytes(1 + 4 * side), side))
    for name in ("i16.png", "rgba.png"):
        image, rise = _peak_rise(lambda n=name: load_grayscale(tmp_path / n))
        assert image.shape == (side, side) and image.dtype == np.uint8 and rise < 800 * 2**20, (name, rise)
    (tmp_path / "big.png").write_bytes(_png(12000, 6000, 16, 0, bytes(1 + 2 * 12000), 4))
    with pytest.raises(DataError, match="over the limit of 40 megapixels"):
        load_grayscale(tmp_path / "big.png")


def test_yaml_files_are_size_capped_and_never_a_device(tmp_path, run_cli):
    (tmp_path / "big.yaml").write_text("seed: 3\n" + "# padding\n" * 200_000)
    for path in (tmp_path / "big.yaml", "/dev/zero"):
        started = time.perf_counter()
        rc, err = run_cli(["train", "--config", path])
        assert rc == 2 and ("over the limit" in err or "not a regular file" in err)
        assert time.perf_counter() - started < 10
    with pytest.raises(UserError, match="a FIFO"):
        os.mkfifo(tmp_path / "fifo")
        read_limited(tmp_path / "fifo", 100)


# ---- 8. no success without a result ---------------------------------------------------------------------
def test_non_finite_weights_are_never_saved(seeds, tmp_path):
    from medclip_nb.train import train

    with pytest.raises(TrainingError, match=r"hold NaN or infinite values.*was not written"):
        train(_cfg(seeds, tmp_path / "run", max_steps=2, lr=1e308, grad_clip=0.0), log=quiet)
    assert not (tmp_path / "run" / "last.pth").exists()


def test_cache_that_decodes_nothing_fails(seeds, tmp_path, run_cli):
    data = {"train": [{"image_path": "missing.png", "report": "x", "labels": [0.0] * 14}] * 2,
            "val": [{"image_path": "gone.png", "report": "y", "labels": [0.0] * 14}] * 2, "test": []}
    (tmp_path / "d.pkl").write_bytes(pickle.dumps(data))
    rc, err = run_cli(["cache", "--data_path", tmp_path / "d.pkl", "--size", 16, "--num_workers", 0])
    assert rc == 2 and "none of the 2 images could be decoded" in err


def test_convert_rewrites_relative_paths_for_its_output_folder(seeds, tmp_path, run_cli):
    out = tmp_path / "elsewhere" / "manifest.jsonl"
    rc, err = run_cli(["convert", "--data_path", seeds["pickle"], "--out", out])
    assert rc == 0, err
    records = load_dataset_file(out)
    path = Path(records["train"][0]["image_path"])
    assert not path.is_absolute() and (out.parent / path).resolve() == (seeds["pickle"].parent / "img0.png").resolve()
