"""Shared test settings."""

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread_no_bars():
    """One torch thread and no progress bars for a module of training runs: tiny models gain
    nothing from a second thread, and other processes (loader workers, a parallel test) keep
    their core. OMP_NUM_THREADS=1 too, which train() and evaluation honour (as the subprocesses
    these tests start do), rather than their cores - num_workers rule."""
    threads = torch.get_num_threads()
    saved = {key: os.environ.get(key) for key in ("TQDM_DISABLE", "OMP_NUM_THREADS")}
    torch.set_num_threads(1)
    os.environ.update(TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    yield
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            del os.environ[key]
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """datasets.pkl of a 24-study phantom at 64 px (about 4 training batches of 4), shared by
    the modules that train tiny models (test_train.py, test_inference.py)."""
    from medclip_nb.data.mimic import prepare_mimic
    from medclip_nb.phantom import generate_phantom

    root = tmp_path_factory.mktemp("tiny_phantom")
    generate_phantom(root / "mimic", studies=24, size=64)
    prepare_mimic(root / "mimic", root / "prepared", num_workers=1)
    return root / "prepared" / "datasets.pkl"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The fuzzer's seed files (tools/fuzz.make_seeds): a tiny valid dataset (PNG images), its
    manifest, a config, an image and the checkpoint of a 2-step run; fresh for each module that
    damages copies of them (test_hostile_inputs.py, test_untrusted_files.py)."""
    from medclip_nb.tools import fuzz

    return fuzz.make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture
def run_cli(capsys):
    """run_cli(argv) -> (exit code, stderr stripped) of the CLI run in this process."""
    from medclip_nb import cli

    def run(argv) -> tuple[int, str]:
        rc = cli.main([str(a) for a in argv])
        return rc, capsys.readouterr().err.strip()

    return run


@pytest.fixture(scope="session")
def phantom30(tmp_path_factory) -> Path:
    """datasets.pkl of a prepared 30-study phantom at 64 px (sentence labels beside it), read by
    test_medclip_paper.py and test_sentence_labels.py; the tests write only under their tmp_path."""
    import contextlib
    import io

    from medclip_nb.data.mimic import prepare_mimic
    from medclip_nb.phantom import generate_phantom

    root = tmp_path_factory.mktemp("phantom30")
    generate_phantom(root / "mimic", studies=30, size=64)
    with contextlib.redirect_stdout(io.StringIO()):
        prepare_mimic(root / "mimic", root / "prepared", num_workers=1)
    return root / "prepared" / "datasets.pkl"
