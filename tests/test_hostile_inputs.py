"""Issue 14: hostile and broken inputs end as a loaded dataset or one line, never a crash, a
traceback, unbounded memory, silent wrong data or lost files."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from medclip_nb.config import from_dict
from medclip_nb.config_load import load_config
from medclip_nb.data import (
    BadImageError,
    CXRDataset,
    SkippedSample,
    load_dataset_file,
    load_grayscale,
    validate_dataset,
)
from medclip_nb.errors import CheckpointError, ConfigError, DataError, TrainingError, one_line
from medclip_nb.model.checkpoint import (
    find_latest,
    load_checkpoint,
    remove_stale_temp_files,
    resolve_resume,
    save_checkpoint,
)
from medclip_nb.model.checkpoint_check import RESUME_PARTS, check_checkpoint
from medclip_nb.tools import fuzz

quiet = lambda *a, **k: None  # noqa: E731


# ---- 1. the unpickler --------------------------------------------------------------------------
def _void_dtype_attack() -> bytes:
    """The issue's gadget: a void dtype whose state sets flags (NPY_ITEM_HASOBJECT) so that file
    bytes would be read as object pointers."""
    blob = pickle.dumps(np.zeros(2, dtype="V8"), protocol=2)
    return blob


def _reconstruct_bomb(n: int) -> bytes:
    return (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ" + struct.pack("<i", n)
            + b"\x85U\x01b\x87R.")


@pytest.mark.parametrize("name, blob, reason", [
    ("void", _void_dtype_attack(), "not a plain numeric or string dtype"),
    ("object", pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "not a plain numeric"),
    ("bomb", _reconstruct_bomb(1_350_000_000), "_reconstruct is only allowed"),
    ("lookup", b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00nope\x86R.", "latin-1"),
    ("deep", b"\x80\x02" + b"]" * 100 + b"a" * 99 + b".", "nested more than"),
    ("bigint", pickle.dumps({"train": [2**100]}), "integer of"),
])
def test_crafted_pickles_are_refused_with_one_line(tmp_path, name, blob, reason):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(blob)
    with pytest.raises(DataError) as info:
        load_dataset_file(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and reason in message


def test_array_state_must_match_shape_and_dtype(tmp_path):
    # Shape says 1000 float64, data holds 8 bytes: refused instead of reading past the buffer.
    blob = pickle.dumps({"train": np.zeros(1)}, protocol=2)
    forged = blob.replace(b"K\x01\x85", b"M\xe8\x03\x85", 1)
    assert forged != blob
    (tmp_path / "f.pkl").write_bytes(forged)
    with pytest.raises(DataError, match="array data holds 8 bytes, shape and dtype need 8000"):
        load_dataset_file(tmp_path / "f.pkl")


def test_self_containing_list_is_refused(tmp_path):
    cycle: list = []
    cycle.append(cycle)
    (tmp_path / "c.pkl").write_bytes(pickle.dumps({"train": cycle}))
    with pytest.raises(DataError, match="contains itself"):
        load_dataset_file(tmp_path / "c.pkl")


def test_convert_pickle_to_manifest_round_trips(seeds, tmp_path, run_cli):
    out = tmp_path / "m.jsonl"
    rc, err = run_cli(["convert", "--data_path", seeds["pickle"], "--out", out])
    assert rc == 0 and err == ""
    from_pickle, from_manifest = load_dataset_file(seeds["pickle"]), load_dataset_file(out)
    validate_dataset(from_pickle, seeds["pickle"])
    validate_dataset(from_manifest, out)
    for split in ("train", "val", "test"):
        for a, b in zip(from_pickle[split], from_manifest[split]):
            # relative paths are rewritten for the manifest's folder: they name the same files
            same = (out.parent / b["image_path"]).resolve() == (seeds["pickle"].parent / a["image_path"]).resolve()
            assert same and a["report"] == b["report"]
            assert np.array_equal(np.array(a["labels"]), np.array(b["labels"]), equal_nan=True)
            assert a["study_id"] == b["study_id"]
    before = out.read_bytes()
    rc, err = run_cli(["convert", "--data_path", seeds["pickle"], "--out", out])
    assert rc == 2 and "never replaced" in err and out.read_bytes() == before


# ---- 3. checkpoints ---------------------------------------------------------------------------
def _flip_a_tensor_byte(source: Path, target: Path) -> None:
    import zipfile

    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64)
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    data_start = info.header_offset + 30 + name_length + extra_length  # the local header's own lengths
    raw[data_start + 10] ^= 0x40
    target.write_bytes(bytes(raw))


def test_flipped_byte_in_a_tensor_record_fails_its_checksum(seeds, tmp_path):
    damaged = tmp_path / "damaged.pth"
    _flip_a_tensor_byte(seeds["checkpoint"], damaged)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(damaged)


def test_latest_passes_over_a_damaged_newest_checkpoint_naming_it(tmp_path):
    save_checkpoint({"step": 1, "x": torch.arange(100.0)}, tmp_path / "checkpoint_epoch_1.pth")
    save_checkpoint({"step": 2, "x": torch.arange(100.0)}, tmp_path / "good.pth")
    _flip_a_tensor_byte(tmp_path / "good.pth", tmp_path / "last.pth")
    (tmp_path / "good.pth").unlink()
    messages: list[str] = []
    assert resolve_resume("latest", tmp_path, log=messages.append) == tmp_path / "checkpoint_epoch_1.pth"
    assert "could not read last.pth" in messages[0]


@pytest.mark.parametrize("field, value", [
    ("config", "not a dict"), ("config", {"batch_size": -3}), ("rng", {"torch": torch.zeros(3)}),
    ("scheduler", {"last_epoch": "abc"}), ("scheduler", {"__class__": 1}), ("scheduler", {"base_lrs": [1e-4]}),
    ("step", -1), ("epoch", 1.5),
    ("batch_in_epoch", True), ("tokenizer", "{not json"), ("tokenizer", 7), ("world_size", 0),
])
def test_malformed_checkpoint_fields_are_one_line_errors(seeds, field, value):
    state = torch.load(seeds["checkpoint"], weights_only=True)
    state[field] = {**state[field], **value} if field == "scheduler" else value  # one bad key of a real one
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(state, "x.pth", RESUME_PARTS)
    assert f"'{field}'" in str(info.value) and "\n" not in str(info.value)


def test_valid_checkpoint_passes_and_nan_weights_do_not(seeds):
    state = torch.load(seeds["checkpoint"], weights_only=True)
    check_checkpoint(state, "x.pth", RESUME_PARTS)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        check_checkpoint(state, "x.pth", RESUME_PARTS)


# ---- 4. images ----------------------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims `width` x `height` (PIL reads the size without decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("size, reason", [((200000, 1), "over the limit"), ((2000, 1), "aspect ratio"),
                                          ((13000, 12000), "over the limit")])
def test_over_limit_images_are_bad_images_checked_before_decoding(tmp_path, size, reason):
    path = tmp_path / "odd.png"
    _png_header_only(path, *size)
    assert path.stat().st_size < 200
    with pytest.raises(BadImageError, match=reason):
        load_grayscale(path)
    dataset = CXRDataset([{"image_path": "odd.png", "report": "x", "labels": [0.0] * 14}], root=tmp_path,
                         transform=lambda t: t, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        assert isinstance(dataset[0], SkippedSample)  # skipped and counted like any bad image


# ---- 5. nothing trained --------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, allowed", [
    ("batch_size", 1, "2..65536"), ("max_steps", 0, "1.."), ("max_steps", -5, "1.."), ("seed", -1, "0..4294967295"),
    ("seed", 2**32, "0..4294967295"), ("embed_dim", 1e11, "1..16384"), ("resize_size", 200000, "1..4096"),
])
def test_sizes_that_train_nothing_or_explode_are_refused(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        from_dict({"data_path": "d.pkl", key: value})
    assert f"'{key}'" in str(info.value) and allowed in str(info.value)


def _train_cfg(seeds, out, **changes):
    values = load_config(seeds["yaml"]).to_dict()
    values.update(model_save_path=str(out), **changes)
    return from_dict(values)


def test_wrong_image_root_stops_naming_it(seeds, tmp_path):
    from medclip_nb.train import train

    cfg = _train_cfg(seeds, tmp_path / "run", image_root=str(tmp_path / "nowhere"))
    with pytest.raises(TrainingError, match=r"made no optimizer step.*unreadable.*image_root .*nowhere"):
        train(cfg, log=quiet)
    assert not (tmp_path / "run" / "best.pth").exists()


def test_resume_past_the_end_is_refused_before_metrics_are_touched(seeds, tmp_path):
    from medclip_nb.train import train

    run = tmp_path / "run"
    run.mkdir()
    state = torch.load(seeds["checkpoint"], weights_only=True)
    state.update(epoch=0, batch_in_epoch=9)  # the dataset has 2 batches per epoch
    save_checkpoint(state, run / "last.pth")
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    with pytest.raises(CheckpointError, match="batch 9 of epoch 1 is past the end"):
        train(_train_cfg(seeds, run, resume_from="latest"), log=quiet)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "split": "train", "loss": 1.0}\n'


def test_validation_without_a_usable_batch_is_warned(seeds, tmp_path):
    from medclip_nb.train import train

    lines: list[str] = []
    train(_train_cfg(seeds, tmp_path / "run", eval_batch_size=1, max_steps=1), log=lines.append)
    assert any("validation at step 1 had no usable batch" in line for line in lines)


# ---- 6. phantom and data folders -----------------------------------------------------------------
def test_data_never_replaces_a_phantom_of_other_parameters_unless_forced(tmp_path, run_cli):
    from medclip_nb.phantom import generate_phantom

    phantom = tmp_path / "phantom"
    generate_phantom(phantom, studies=6, size=32, seed=0)
    mine = phantom / "files" / "notes.txt"
    base = ["data", "--phantom_dir", phantom, "--phantom_studies", 5, "--phantom_size", 32]
    rc, err = run_cli([*base, "--data_path", phantom / "datasets.pkl"])
    assert rc == 2 and "holds a phantom of 6 studies" in err and "--force" in err
    assert len(list((phantom / "files").rglob("*.jpg"))) >= 6
    # The same phantom's parameters: prepared, and recorded as derived from it.
    rc, _ = run_cli([*base[:4], 6, "--phantom_size", 32, "--data_path", phantom / "datasets.pkl"])
    assert rc == 0 and (phantom / "datasets.pkl").is_file()
    copy = tmp_path / "elsewhere" / "datasets.pkl"  # a copy elsewhere, with its report: derived too
    copy.parent.mkdir()
    copy.write_bytes((phantom / "datasets.pkl").read_bytes())
    (copy.parent / "prepare_report.json").write_bytes((phantom / "prepare_report.json").read_bytes())
    mine.write_text("my notes")  # a file the generator never writes: replacing must stop
    rc, err = run_cli([*base, "--data_path", phantom / "datasets.pkl", "--force"])
    assert rc == 2 and "notes.txt" in err and mine.read_text() == "my notes"
    mine.unlink()
    rc, err = run_cli([*base, "--data_path", phantom / "datasets.pkl", "--force"])
    assert rc == 0, err
    assert sum(len(v) for k, v in load_dataset_file(phantom / "datasets.pkl").items()
               if k in ("train", "val", "test")) <= 5  # prepared again, from the 5-study phantom
    from medclip_nb.data import build_datasets

    with pytest.raises(DataError, match="prepared from the phantom of 6 studies.*now holds a phantom of 5"):
        build_datasets(from_dict({"data_path": str(copy), "batch_size": 2}))


def test_data_uses_a_foreign_dataset_as_it_is(tmp_path, run_cli):
    foreign = tmp_path / "mine.pkl"
    foreign.write_bytes(b"not touched")
    rc, _ = run_cli(["data", "--data_path", foreign, "--phantom_dir", tmp_path / "p"])
    assert rc == 0 and foreign.read_bytes() == b"not touched" and not (tmp_path / "p").exists()


# ---- 7. one line, exit 2 -----------------------------------------------------------------------
@pytest.mark.parametrize("name, text, expected", [
    ("alias.yaml", "frontal_views: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)) + "]\n", "frontal_views"),
    ("deep.yaml", "embed_dim: " + "[" * 5000 + "]" * 5000 + "\n", "error: "),
    ("keys.yaml", "1: one\nseed: 3\n", "is not a string"),
    ("latin1.yaml", b"seed: 3 # caf\xe9\n", "not UTF-8"),
])
def test_broken_yaml_is_one_short_line(tmp_path, run_cli, name, text, expected):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc, err = run_cli(["train", "--config", path])
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and expected in err
    assert len(err) < 500  # the alias bomb expands to 9**9 items; the message quotes a few


def test_worker_error_is_unwrapped_to_its_own_line():
    from torch._utils import ExceptionWrapper

    try:
        raise BadImageError("/data/x.jpg: image file not found")
    except BadImageError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadImageError) as info:
        wrapper.reraise()
    assert "\n" in str(info.value)
    assert one_line(info.value) == "/data/x.jpg: image file not found"


def test_model_save_path_that_is_a_file(seeds, tmp_path):
    from medclip_nb.train import train

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="'model_save_path': .* is a file"):
        train(_train_cfg(seeds, tmp_path / "file"), log=quiet)


def test_evaluate_checks_metrics_json_before_evaluating(seeds, tmp_path, run_cli):
    (tmp_path / "metrics.json").write_bytes(b"\xff\xfe not json")
    rc, err = run_cli(["evaluate", "--checkpoint", seeds["checkpoint"], "--out", tmp_path,
                       "--data_path", seeds["pickle"]])
    assert rc == 2 and "metrics.json" in err and "left unchanged" in err


def test_cache_size_is_bounded(seeds, run_cli):
    rc, err = run_cli(["cache", "--data_path", seeds["pickle"], "--size", 100000])
    assert rc == 2 and "--size" in err


# ---- 8. hygiene ---------------------------------------------------------------------------------
def test_full_disk_says_no_space_left(tmp_path, monkeypatch):
    import medclip_nb.model.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "_open_for_write", lambda path: open("/dev/full", "wb"))
    with pytest.raises(CheckpointError, match="no space left on device"):
        save_checkpoint({"x": torch.zeros(100000)}, tmp_path / "last.pth")


def test_metrics_log_full_disk_is_one_line(tmp_path, monkeypatch):
    from medclip_nb.train.state import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl", None)
    log._file.close()
    log._file = open("/dev/full", "w", buffering=1)
    with pytest.raises(TrainingError, match="no space left on device"):
        log.write({"step": 1, "loss": 1.0})


def test_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".last.pth.tmp-{pid}"
    alive = tmp_path / f".best.pth.tmp-{os.getppid()}"
    foreign = tmp_path / f".notes.txt.tmp-{pid}"
    for p in (stale, alive, foreign):
        p.write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path, log=quiet) == [stale]
    assert not stale.exists() and alive.exists() and foreign.exists()


def test_latest_names_unreadable_checkpoints_and_refuses_to_start_over_them(tmp_path):
    (tmp_path / "last.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=r"could not read last.pth.*--force"):
        resolve_resume("latest", tmp_path)
    messages: list[str] = []
    assert resolve_resume("latest", tmp_path, force=True, log=messages.append) is None
    assert "last.pth" in messages[0]
    unreadable: list[Path] = []
    assert find_latest(tmp_path, unreadable) is None and unreadable == [tmp_path / "last.pth"]


def test_leakage_check_compares_resolved_paths(tmp_path):
    record = {"report": "x", "labels": [0.0] * 14}
    splits = {"train": [{**record, "image_path": "img/a.jpg"}],
              "val": [{**record, "image_path": "img/b.jpg"}],
              "test": [{**record, "image_path": str(tmp_path / "img" / "a.jpg")}]}
    warnings = validate_dataset(splits, tmp_path / "d.pkl")
    assert any("leakage" in w and "train and test" in w for w in warnings)


def test_evaluate_picks_its_device_through_the_checked_function(seeds, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="'gpu_id': '3' is not a CUDA device index"):
        from medclip_nb.evaluate import evaluate_checkpoint

        evaluate_checkpoint(seeds["checkpoint"], tmp_path, {"gpu_id": "3", "data_path": str(seeds["pickle"])},
                            log=quiet)


# ---- 9. fuzz -------------------------------------------------------------------------------------
# A smoke run of every kind `make fuzz` covers (the full run is `make fuzz`, not part of make test).
@pytest.mark.parametrize("fmt, n", [("pickle", 60), ("manifest", 60), ("csv", 60), ("yaml", 30), ("checkpoint", 30),
                                    ("export", 30), ("image", 20), ("prompts", 20)])
def test_fuzz_mutations_load_or_fail_in_one_line(tmp_path_factory, fmt, n):
    folder = tmp_path_factory.getbasetemp() / "fuzz"
    problems: list[str] = []
    peaks: list[int] = []

    def report(outcome, detail, index, peak):
        peaks.append(peak)
        if outcome not in fuzz.GOOD:
            problems.append(f"#{index} {outcome}: {detail}")

    counts = fuzz.run_format(fmt, n, seed=14, folder=folder, report=report)
    assert sum(counts.values()) == n
    assert problems == []
    assert counts["one-line error"] > 0  # the mutations reached the checks
    assert max(peaks) < fuzz.MEMORY_LIMIT
