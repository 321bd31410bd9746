"""The fuzzer's inputs: valid seeds of each of the eight kinds it mutates, and the mutations.

Seeds (`make_seeds`): PNG images, a datasets.pkl, a JSON Lines and a CSV manifest, a YAML
config, two checkpoints (the seed's simple model, and a MedCLIP model with a subword tokenizer,
each from a 2-step training run), an export folder of the second, image files (8-bit, 16-bit,
RGBA PNG and a JPEG) and a prompts file.

Each mutation returns a `Case`: the bytes of the input (or, for an export, the files to change),
and `tampered`: the file's bytes changed behind its checksum (a checkpoint's archive CRCs, an
export's SHA256SUMS), so that loading it with a different result is a silent wrong result.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medclip_nb.config_load import load_config
from medclip_nb.model import export_checkpoint
from medclip_nb.train import train

KINDS = ("pickle", "manifest", "csv", "yaml", "checkpoint", "export", "image", "prompts")
_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 8,
                b"9" * 30, b"-1", b"1e400", b"[[[[[[[[", b"{{{{", b"&a *a", b"\n", b"'", b'"', b"\\u0000"]
_ODD = ["-1", "4294967296", "1e11", "200000", "null", "[]", "{}", "true", "'\\x00'", "~",
        "!!python/object:os.system ''", "&a [*a, *a]", "0x7fffffffffffffffff", "1" * 5000,
        "[" * 2000 + "]" * 2000, "{" * 100000, "2001-01-01", "NaN", ".inf", '"\\ud800"', "²", "16384", "2147483648"]


@dataclass
class Case:
    """One mutated input: `data` (the file's bytes) or `files` (an export's changed files by
    name; None deletes one); `tampered`: bytes changed behind a checksum."""

    data: bytes = b""
    files: dict[str, bytes | None] = field(default_factory=dict)
    tampered: bool = False
    note: str = ""


# ---- seeds --------------------------------------------------------------------------------------
def _records(n: int) -> list[dict]:
    labels = [1.0, 0.0, -1.0, float("nan")] + [0.0] * 10
    return [{"image_path": f"img{i}.png", "report": f"Finding {i}. No effusion. Small left pleural effusion.",
             "labels": np.array(labels, dtype=np.float32), "study_id": np.int64(i), "subject_id": i,
             "view": "PA"} for i in range(n)]


def _write_images(folder: Path) -> dict[str, Path]:
    from PIL import Image

    for i in range(6):
        Image.fromarray(np.full((20, 18), 40 * i, dtype=np.uint8)).save(folder / f"img{i}.png")
    gradient = np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 130
    Image.fromarray(gradient).save(folder / "image16.png")
    rgba = np.zeros((20, 18, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, np.arange(18, dtype=np.uint8) * 14
    Image.fromarray(rgba, mode="RGBA").save(folder / "image_rgba.png")
    Image.fromarray(np.full((20, 18), 90, dtype=np.uint8)).save(folder / "image.jpg", quality=90)
    return {"image": folder / "img1.png", "image16": folder / "image16.png", "image_rgba": folder / "image_rgba.png",
            "image_jpeg": folder / "image.jpg"}


def _write_manifests(folder: Path, data: dict) -> dict[str, Path]:
    manifest, csv = folder / "manifest.jsonl", folder / "manifest.csv"
    rows = []
    with manifest.open("w") as f:
        for split, records in data.items():
            for r in records:
                row = {"split": split, **{k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()}}
                row["labels"] = [None if isinstance(v, float) and v != v else v for v in row["labels"]]
                f.write(json.dumps(row) + "\n")
                rows.append(row)
    lines = ["split,image_path,report,labels,study_id,subject_id,view"]
    for row in rows:
        labels = ";".join("" if v is None else str(v) for v in row["labels"])
        lines.append(f'{row["split"]},{row["image_path"]},"{row["report"]}",{labels},{row["study_id"]},'
                     f'{row["subject_id"]},{row["view"]}')
    csv.write_text("\n".join(lines) + "\n")
    return {"manifest": manifest, "csv": csv}


def _train_once(yaml_path: Path, checkpoint: Path) -> None:
    if not checkpoint.is_file():
        with contextlib.redirect_stderr(io.StringIO()):
            train(load_config(yaml_path), log=lambda *a, **k: None)


def make_seeds(folder: Path) -> dict[str, Path]:
    """Valid inputs of each kind in `folder` (made once; a second call reuses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = _write_images(folder)
    data = {"train": _records(4), "val": _records(2), "test": _records(2)}
    pkl = folder / "datasets.pkl"
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    seeds.update(_write_manifests(folder, data), pickle=pkl)
    common = (f"data_path: {pkl}\nimage_size: 16\nresize_size: 16\nbatch_size: 2\neval_batch_size: 2\nnum_workers: 0\n"
              f"max_steps: 2\nlr: 1.0e-4\nfrontal_views: [PA, AP]\nseed: 3\nwarmup: 0.1\nuse_amp: false\n")
    seeds["yaml"] = folder / "config.yaml"
    seeds["yaml"].write_text(common + f"model: simple\nembed_dim: 8\nmodel_save_path: {folder / 'run'}\n")
    seeds["checkpoint"] = folder / "run" / "last.pth"
    _train_once(seeds["yaml"], seeds["checkpoint"])
    seeds["yaml_medclip"] = folder / "config_medclip.yaml"
    seeds["yaml_medclip"].write_text(
        common + f"model: medclip\nvision_backbone: small_cnn\ntext_layers: 1\ntext_width: 16\ntext_heads: 2\n"
                 f"embed_dim: 8\nmax_text_tokens: 16\nvocab_size: 60\nmodel_save_path: {folder / 'run_medclip'}\n")
    seeds["checkpoint_medclip"] = folder / "run_medclip" / "last.pth"
    _train_once(seeds["yaml_medclip"], seeds["checkpoint_medclip"])
    seeds["export"] = folder / "export"
    if not (seeds["export"] / "SHA256SUMS").is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            export_checkpoint(seeds["checkpoint_medclip"], seeds["export"])
    seeds["prompts"] = folder / "prompts.yaml"
    seeds["prompts"].write_text("Edema: [pulmonary edema, interstitial edema]\nPneumothorax: [pneumothorax]\n"
                                "No Finding: [no acute cardiopulmonary process]\n")
    return seeds


# ---- generic mutations --------------------------------------------------------------------------------
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


def junk(rng: random.Random, depth: int = 0) -> Any:
    choices = [None, True, -1, 0, 2**40, 2**70, -2**70, 1e308, float("nan"), float("inf"), "", "x" * 5000,
               "\x00", "é", "²", b"\x00\x01", [], {}, [1, 2], {"a": 1}, (1, "b")]
    value = rng.choice(choices)
    if depth < 2 and rng.random() < 0.2:
        value = [junk(rng, depth + 1)] if rng.random() < 0.5 else {"k": junk(rng, depth + 1)}
    return value


def _alias_bomb(key: str) -> str:
    return f"{key}: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(  # 9**9 items, if expanded
        f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)) + "]\n"


def mutate_text(text: str, rng: random.Random, keys: tuple[str, ...] = ("embed_dim",)) -> str:
    """YAML / JSON Lines / CSV: swap a scalar for an odd one, nest, alias-bomb, or edit bytes."""
    kind = rng.randrange(6)
    lines = text.splitlines(keepends=True) or [""]
    at = rng.randrange(len(lines))
    odd = rng.choice(_ODD)
    if kind == 0 and ":" in lines[at]:
        key = lines[at].split(":", 1)[0]
        lines[at] = f"{key}: {odd}\n"
    elif kind == 1 and '": ' in lines[at]:
        parts = lines[at].split('": ')
        i = rng.randrange(1, len(parts))
        parts[i] = odd + ("," + parts[i].split(",", 1)[1] if "," in parts[i] else "}")
        lines[at] = '": '.join(parts) + ("\n" if not parts[-1].endswith("\n") else "")
    elif kind == 2:
        key = rng.choice(keys)
        lines = [line for line in lines if not line.startswith(key + ":")]
        lines.append(_alias_bomb(key))
    elif kind == 3:
        lines.insert(at, rng.choice(["1: one\n", "? [a, b]\n: c\n", "{x: 1}\n", "- item\n", "\ufeffkey: 1\n",
                                     "k: " + "[" * 3000 + "]" * 3000 + "\n", "k: caf\udce9\n"]))
    elif kind == 4 and "," in lines[at]:
        cells = lines[at].rstrip("\n").split(",")
        cells[rng.randrange(len(cells))] = rng.choice([odd, "", '"', "nan", "inf", "1;2", "²", ";" * 40,
                                                        "x" * 100000])
        if rng.random() < 0.2:
            cells = cells[:rng.randrange(len(cells))] if rng.random() < 0.5 else cells * 2
        lines[at] = ",".join(cells) + "\n"
    else:
        return mutate_bytes(text.encode("utf-8"), rng).decode("utf-8", errors="surrogateescape")
    return "".join(lines)


def text_case(original: bytes, rng: random.Random, keys: tuple[str, ...]) -> Case:
    return Case(mutate_text(original.decode(), rng, keys).encode("utf-8", errors="surrogateescape"))


def mutate_pickle(data: bytes, rng: random.Random) -> Case:
    """Byte edits, or a valid pickle of a structurally odd dataset (NumPy arrays included)."""
    if rng.random() < 0.6:
        return Case(mutate_bytes(data, rng))
    dataset = pickle.loads(data)  # our own seed, trusted
    split = rng.choice(list(dataset))
    record = rng.choice(dataset[split])
    key = rng.choice(list(record) + ["labels", "labels", "extra"])
    kind = rng.randrange(5)
    if kind == 0:
        record[key] = junk(rng)
    elif kind == 1:
        dtype = rng.choice(["f4", "f8", "i8", "u1", "b1", "c16", "U3", ">f4"])
        record[key] = np.zeros(rng.choice([0, 1, 14, 15, 300]), dtype=dtype)
    elif kind == 2:
        dataset[rng.choice(["train", "val", "test", "bogus", 7])] = junk(rng)
    elif kind == 3:  # shared references: the same long text a thousand times
        shared = "x" * rng.choice([10, 1000, 100_000])
        dataset["train"] = [dict(record, report=shared) for _ in range(rng.choice([10, 1000]))]
    else:
        record[key] = np.float64(rng.choice([1.0, float("nan"), 2.0, -1.0]))
    return Case(pickle.dumps(dataset, protocol=rng.choice([2, 3, 4, 5])))


# ---- model files -------------------------------------------------------------------------------------
def _plainish(value: Any) -> Any:
    """torch.save(weights_only) cannot hold bytes: a string instead."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _odd_model_keys(rng: random.Random) -> dict:
    return rng.choice([{"text_width": 16384, "text_layers": 128}, {"text_heads": 4}, {"text_heads": 1},
                       {"image_size": 4096, "resize_size": 4096}, {"embed_dim": 16384}, {"max_text_tokens": 8192},
                       {"vocab_size": 1}, {"num_workers": 256}, {"eval_batch_size": 65536},
                       {"text_features_path": "/dev/zero", "text_encoder": "precomputed"},
                       {"bert_path": "/dev/zero", "text_encoder": "bert"}, {"vision_backbone": "swin_t"},
                       {"loss": "siglip"}, {"model": "simple"}, {"augment": "none"}])


def _odd_tokenizer(text: str, rng: random.Random) -> str:
    data = json.loads(text)
    kind = rng.randrange(5)
    if kind == 0 and isinstance(data.get("truncation"), dict):
        data["truncation"]["max_length"] = rng.choice([2**31, 2**64, 0, 15, 17, -1, "x"])
    elif kind == 1 and isinstance(data.get("post_processor"), dict):
        data["post_processor"]["single"] = [{"Sequence": {"id": "B", "type_id": 0}}]
    elif kind == 2 and isinstance(data.get("model"), dict) and isinstance(data["model"].get("vocab"), dict):
        data["model"]["vocab"][rng.choice(["zzz", "[PAD]", "e"])] = rng.choice([2**31, -1, 0, 10**30])
    elif kind == 3:
        data["padding"] = {"strategy": {"Fixed": 2**40}, "pad_id": 0, "pad_token": "[PAD]", "direction": "Right",
                           "pad_to_multiple_of": None, "pad_type_id": 0}
    else:
        data = {"kind": rng.choice(["char", "hf", "clip_indices", "bogus"]), "max_length": rng.choice([50, 2**31]),
                "path": "/dev/zero"}
    return json.dumps(data)


def mutate_checkpoint(path: Path, rng: random.Random) -> Case:
    """Byte edits (caught by the archive checksums: `tampered`), or a validly written checkpoint
    with one field, a model key or the tokenizer set to something odd (the structural checks)."""
    import torch

    raw = path.read_bytes()
    if rng.random() < 0.35:
        return Case(mutate_bytes(raw, rng), tampered=True)
    state = torch.load(path, weights_only=True)
    field_name = rng.choice(["config", "config", "tokenizer", "rng", "scheduler", "step", "epoch", "batch_in_epoch",
                             "model", "model", "optimizer", "scaler", "world_size", "best_val_loss", "train_time"])
    kind = rng.randrange(3)
    if field_name == "config" and kind < 2:
        state["config"].update(_odd_model_keys(rng))
    elif field_name == "tokenizer" and kind < 2:
        state["tokenizer"] = _odd_tokenizer(state["tokenizer"], rng)
    elif field_name == "model" and kind < 2:
        key = rng.choice(list(state["model"]))
        tensor = state["model"][key]
        state["model"][key] = rng.choice([
            torch.full_like(tensor, float("nan")) if tensor.is_floating_point() else tensor.reshape(-1)[:0],
            tensor.to(torch.int64), tensor.reshape(-1), torch.zeros(1, 2, 3), tensor.double()])
    elif kind == 0 or not isinstance(state.get(field_name), (dict, list)):
        state[field_name] = _plainish(junk(rng))
    elif isinstance(state[field_name], dict) and state[field_name]:
        state[field_name][rng.choice(list(state[field_name]))] = _plainish(junk(rng))
    elif isinstance(state[field_name], list) and state[field_name]:
        state[field_name][rng.randrange(len(state[field_name]))] = _plainish(junk(rng))
    if rng.random() < 0.15:
        state.pop(rng.choice(list(state)))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return Case(buffer.getvalue())


def _checksums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())).encode()


def _safetensors_edit(data: bytes, rng: random.Random) -> bytes:
    """Edit the JSON header of a safetensors file (dtype, shape, offsets, metadata) and keep it valid JSON."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    kind = rng.randrange(5)
    if kind == 0:
        header[name]["dtype"] = rng.choice(["I64", "F16", "BF16", "U8", "F64", "BOOL", "XX"])
    elif kind == 1:
        header[name]["shape"] = rng.choice([[], [0], [2**31, 2**31], [1] * 40, [-1]])
    elif kind == 2:
        header[name]["data_offsets"] = rng.choice([[0, 2**40], [5, 1], [0, 0]])
    elif kind == 3:
        meta = json.loads(header["__metadata__"]["medclip_nb_config"])
        meta.update(_odd_model_keys(rng))
        header["__metadata__"]["medclip_nb_config"] = json.dumps(meta, sort_keys=True)
    else:
        header["__metadata__"] = rng.choice([{}, {"format": "pt"}, {"medclip_nb_config": "[[[["}])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + size:]


def mutate_export(folder: Path, rng: random.Random) -> Case:
    """Bytes of one file changed behind SHA256SUMS (`tampered`: must be refused), or a file
    changed with SHA256SUMS rewritten to match (the structural checks behind the checksums), a
    stray file, or SHA256SUMS itself edited."""
    import torch
    from safetensors.torch import load, save

    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "SHA256SUMS"}
    name = rng.choice(sorted(files))
    kind = rng.randrange(6)
    if kind == 0:  # flipped bits, cut files: behind the checksums
        return Case(files={name: mutate_bytes(files[name], rng)}, tampered=True, note=f"bytes of {name}")
    if kind == 1:
        return Case(files={"SHA256SUMS": mutate_bytes(_checksums(files), rng)}, note="SHA256SUMS")
    if kind == 2:
        return Case(files={rng.choice(["extra.txt", "pytorch_model.bin", "fifo"]): b"x"}, note="a stray file")
    changed = dict(files)
    if kind == 3:  # config.json / tokenizer.json edited and re-hashed
        target = rng.choice(["config.json", "tokenizer.json"])
        if target == "config.json" and rng.random() < 0.6:
            config = json.loads(files[target])
            config["config"].update(_odd_model_keys(rng))
            changed[target] = json.dumps(config).encode()
        elif target == "tokenizer.json" and rng.random() < 0.6:
            changed[target] = _odd_tokenizer(files[target].decode(), rng).encode()
        else:
            changed[target] = mutate_text(files[target].decode(), rng, ("config",)).encode("utf-8", "surrogateescape")
    elif kind == 4:  # the safetensors header edited and re-hashed
        changed["model.safetensors"] = _safetensors_edit(files["model.safetensors"], rng)
    else:  # weights replaced by valid tensors of another dtype or values, re-hashed
        tensors = load(files["model.safetensors"])
        key = rng.choice(sorted(tensors))
        t = tensors[key]
        tensors[key] = rng.choice([t.to(torch.int64), torch.full_like(t, float("nan")) if t.is_floating_point()
                                   else t, t.reshape(-1), t.double(), torch.zeros(3)])
        meta = _safetensors_metadata(files["model.safetensors"])
        changed["model.safetensors"] = save(tensors, metadata=meta)
    return Case(files={**changed, "SHA256SUMS": _checksums(changed)}, note="re-hashed")


def _safetensors_metadata(data: bytes) -> dict:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]).get("__metadata__", {})


# ---- images and prompts ---------------------------------------------------------------------------------
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, depth: int, color: int, row: bytes, rows: int) -> bytes:
    """A PNG whose image data is `row` (filter byte included) `rows` times, compressed as a stream."""
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    packer, parts = zlib.compressobj(1), []
    for _ in range(rows):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def mutate_image(seeds: dict[str, Path], rng: random.Random) -> Case:
    """Byte edits of a PNG (8-bit, 16-bit, RGBA) or JPEG, a header claiming other dimensions (valid
    CRC), or a valid image that is large but compresses to little (16-bit, RGBA; up to 12000 a
    side, whose data is cut short when the header alone must refuse it)."""
    kind = rng.randrange(4)
    if kind < 2:
        return Case(mutate_bytes(seeds[rng.choice(["image", "image16", "image_rgba", "image_jpeg"])].read_bytes(),
                                 rng))
    if kind == 2:
        data = bytearray(seeds[rng.choice(["image", "image16", "image_rgba"])].read_bytes())
        width, height = rng.choice([(2**31 - 1, 1), (200000, 1), (12000, 12000), (6000, 6000), (1, 1), (0, 5)])
        body = struct.pack(">II", width, height) + bytes(data[24:29])  # IHDR: width, height, depth, colour, ...
        data[8:33] = _png_chunk(b"IHDR", body)
        return Case(bytes(data))
    side = rng.choice([1000, 4000, 6000, 12000])
    height = rng.choice([side, side // 2])
    depth, color, channels = rng.choice([(16, 0, 2), (8, 6, 4), (8, 4, 2), (16, 6, 8)])
    row = bytes(1 + side * channels)
    rows = height if side * height <= 40_000_000 else 16  # over the pixel limit: the header must refuse it
    return Case(_png(side, height, depth, color, row, rows), note=f"{side}x{height} depth {depth} colour {color}")


def mutate_prompts(original: bytes, rng: random.Random) -> Case:
    """A prompts file: the text mutations, deep nesting, Latin-1, non-strings, alias bombs."""
    kind = rng.randrange(4)
    if kind == 0:
        return Case(rng.choice([b"Edema: [caf\xe9]\n", b"Edema: " + b"[" * 5000 + b"]" * 5000 + b"\n",
                                b"Edema: [1, 2.5, null, {a: b}]\n", b"- just\n- a list\n", b"",
                                b"Edema: " + b"[x, " * 20000 + b"\n", _alias_bomb("Edema").encode()]))
    return text_case(original, rng, ("Edema", "Pneumothorax", "No Finding"))
