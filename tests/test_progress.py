"""The shared progress display: plain periodic lines off a terminal, silent with TQDM_DISABLE."""

from medclip_nb.progress import PlainProgress, progress


def test_plain_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0.1")
    clock = iter(range(0, 100, 1))
    monkeypatch.setattr("medclip_nb.progress.time.monotonic", lambda: float(next(clock)))
    bar = progress(total=4, desc="step", unit="img")
    assert isinstance(bar, PlainProgress)  # pytest's stderr is not a terminal
    assert list(progress(range(3), desc="loop", unit="x")) == [0, 1, 2]
    bar.update(2)
    bar.update(2)
    bar.close()
    bar.close()  # a second close prints nothing more
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("step: 4/4 img (100%), done in")
    assert any(line.startswith("step: 2/4 img (50%)") for line in lines)
    assert any(line.startswith("loop: 3/3 x (100%), done in") for line in lines)


def test_silent_with_tqdm_disable(monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert sum(progress(range(5), desc="quiet")) == 10
    bar = progress(total=2, desc="quiet")
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == ""
