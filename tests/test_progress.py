"""The shared progress display: plain periodic lines off a terminal; with TQDM_DISABLE (headless
runs) no bar, no line for a short step and a line every TQDM_MININTERVAL seconds of a long one;
`working` for steps no bar can count; training's lines carry step/total, loss, pairs/s and ETA."""

import re
import time

import pytest

from medclip_nb.config import from_dict
from medclip_nb.progress import PlainProgress, duration, progress, working


@pytest.fixture(autouse=True)
def no_line_yet(monkeypatch):
    """Each test starts as a process that has printed no progress line (intervals count from the last one)."""
    monkeypatch.setattr("medclip_nb.progress._last_line", [0.0])


def fake_clock(monkeypatch, step: float = 1.0):
    clock = iter(range(0, 10_000))
    monkeypatch.setattr("medclip_nb.progress.time.monotonic", lambda: float(next(clock)) * step)


def test_plain_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0.1")
    fake_clock(monkeypatch)
    bar = progress(total=4, desc="step", unit="img")
    assert isinstance(bar, PlainProgress)  # pytest's stderr is not a terminal
    assert list(progress(range(3), desc="loop", unit="x")) == [0, 1, 2]
    bar.update(2)
    bar.update(2)
    bar.close()
    bar.close()  # a second close prints nothing more
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("step: 4/4 img (100%), done in")
    assert any(line.startswith("step: 2/4 img (50%)") and ", ETA " in line for line in lines)
    assert any(line.startswith("loop: 3/3 x (100%), done in") for line in lines)


def test_headless_short_steps_print_nothing(monkeypatch, capsys):
    """What nbval compares stays free of timings: a step shorter than the interval is silent."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "30")
    assert sum(progress(range(5), desc="quiet")) == 10
    bar = progress(total=2, desc="quiet")
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == ""


def test_headless_long_steps_print_a_line_per_interval_with_eta(monkeypatch, capsys):
    """make study (TQDM_DISABLE=1): no bar, but a long step says where it is, how fast, how long to go."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "30")
    now = [0.0]
    monkeypatch.setattr("medclip_nb.progress.time.monotonic", lambda: now[0])
    bar = progress(total=100, desc="Epoch 1/3", unit="batch")
    assert isinstance(bar, PlainProgress)
    for _ in range(10):  # a batch every 10 s
        now[0] += 10
        bar.set_postfix(step="5/300", loss="2.1")
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    periodic = [line for line in lines if "done in" not in line]
    assert len(periodic) == 3, lines  # at 30, 60 and 90 s
    assert re.match(r"Epoch 1/3: \d+/100 batch \(\d+%\), \d+ s, [\d.]+ batch/s, ETA \d+ (s|min), step=5/300, "
                    r"loss=2\.1$", periodic[0]), periodic[0]
    assert lines[-1].startswith("Epoch 1/3: 10/100 batch (10%), done in")


def test_silent_when_the_interval_is_infinite_or_the_caller_disables(monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "inf")
    fake_clock(monkeypatch, step=100.0)
    for _ in progress(range(5), desc="a"):
        pass
    for _ in progress(range(5), desc="b", disable=True):
        pass
    assert capsys.readouterr().err == ""


def test_working_prints_while_an_opaque_step_runs(monkeypatch, capsys):
    monkeypatch.setenv("TQDM_MININTERVAL", "0.1")
    with working("fitting"):
        time.sleep(0.45)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(re.fullmatch(r"fitting: working, \d+ s", line) for line in lines), lines
    with working("short"):
        pass
    monkeypatch.setenv("TQDM_MININTERVAL", "inf")
    with working("silenced"):
        time.sleep(0.2)
    assert capsys.readouterr().err == ""


def test_duration_reads_like_a_person_would_say_it():
    assert [duration(s) for s in (4.2, 99, 720, 9000, float("nan"))] == ["4 s", "99 s", "12 min", "2.5 h", "?"]


def test_headless_training_lines_carry_step_loss_pairs_and_eta(tiny_dataset, tmp_path, monkeypatch, capsys):
    from medclip_nb.train import train

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "0.1")
    monkeypatch.setattr("medclip_nb.progress._interval", lambda: 0.0)  # every update prints
    cfg = from_dict(dict(data_path=str(tiny_dataset), model_save_path=str(tmp_path / "run"), image_size=32,
                         resize_size=48, model="simple", batch_size=4, eval_batch_size=8, num_epochs=1,
                         max_steps=4, num_workers=0, log_every=1, lr=1e-4, seed=7))
    train(cfg, log=lambda *a, **k: None)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Epoch 1/1")]
    pattern = (r"Epoch 1/1: \d+/\d+ batch \(\d+%\), \d+ s, [\d.e+-]+ batch/s, ETA [\d.]+ (s|min|h), "
               r"step=\d+/\d+, loss=[\d.]+, lr=[\d.e+-]+, pairs_s=\d+, run_eta=[\d.]+ (s|min|h)")
    assert any(re.fullmatch(pattern, line) for line in lines), lines


def test_heartbeat_prints_while_one_update_takes_long_and_stops_on_close(monkeypatch, capsys):
    """A slow batch (longer than the interval) still leaves a line per interval in a log."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "0.1")
    bar = progress(total=3, desc="Epoch 1/1", unit="batch", heartbeat=True)
    time.sleep(0.45)  # the first batch is slow: no update yet
    bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("Epoch 1/1: 0/3 batch") for line in lines) >= 2, lines
    assert lines[-1].startswith("Epoch 1/1: 1/3 batch (33%), done in")
    time.sleep(0.3)
    assert capsys.readouterr().err == ""  # closed: the thread has stopped


def test_intervals_count_from_the_latest_line_of_any_display(monkeypatch, capsys):
    """A line, then a step that ends quietly within the interval, then an opaque one: the opaque
    step's line comes one interval after that last line, not one interval after it began."""
    from medclip_nb.progress import say_progress

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "1.0")
    say_progress("phase one: done")
    bar = progress(total=2, desc="quiet")
    time.sleep(0.6)  # shorter than the interval: this step prints nothing
    bar.update(2)
    bar.close()
    with working("next step"):
        time.sleep(0.9)  # the line is due 0.4 s in; counted from its own start it would come at 1.0 s
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "phase one: done" and any(line.startswith("next step: working") for line in lines), lines
