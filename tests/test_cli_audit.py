"""A helper's audit of omni.io, omni.cli and omni.eval.report: each test fails on the code before its fix."""

import json
import os

import pytest
from typer.testing import CliRunner

from omni.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r, needle):
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    assert r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", ["sample", "sheet"])
@pytest.mark.parametrize("option,value", [("--shapes", ","), ("--colors", " , "), ("--shapes", "")])
def test_an_empty_shape_or_colour_list_is_refused(tmp_path, cmd, option, value):
    """`--shapes ,` (or "", or a list of blanks) named no shape and drew every one, silently."""
    out = tmp_path / ("o" if cmd == "sample" else "s.png")
    r = invoke("world", cmd, "--task", "vqa", "--n", 1, option, value, "--out", out)
    one_line_error(r, f"{option} must name at least one")
    assert not out.exists()


def test_gradients_batches_are_checked_before_the_model_loads(tmp_path):
    """--batches 0 or -1 was refused by loss_gradients only after the checkpoint loaded (here: none to load)."""
    for b in (0, -1):
        r = invoke("eval", "gradients", "--batches", b, "--checkpoint", tmp_path / "no-such-checkpoint")
        one_line_error(r, f"--batches must be >= 1, got {b}")


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A write that failed (a full disk, the path a directory) left `.NAME.tmpPID-THREAD` beside it, one per try."""
    from omni import io

    (tmp_path / "cfg.json").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        io.write_json(tmp_path / "cfg.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]

    target = tmp_path / "model.json"
    io.write_json(target, {"old": True})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}  # what it held is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "model.json"]


def test_threads_writing_one_file_each_write_whole_files(tmp_path):
    """Two threads writing one path shared the temporary file `.NAME.tmpPID`: one renamed it away under
    the other (FileNotFoundError), or renamed a file the other was still writing."""
    import threading

    from omni import io

    target, errors = tmp_path / "x.json", []

    def work(i: int) -> None:
        for j in range(40):
            try:
                io.write_json(target, {"thread": i, "j": j, "pad": "x" * 2000})
            except OSError as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and json.loads(target.read_text())["j"] == 39
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize("seeds", [0, [[0]], "0", [True]])
def test_compare_refuses_malformed_sampling_seeds_in_one_line(tmp_path, seeds):
    """`sampling_seeds` that is not a list of integers was a TypeError traceback (exit 1)."""
    base = {"task": "vqa", "n": 3, "seed_start": 2_000_000_000, "scores": {"accuracy": [1, 0, 1]}}
    (tmp_path / "a.json").write_text(json.dumps({**base, "sampling_seeds": [0]}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "sampling_seeds": seeds}))
    r = invoke("eval", "compare", tmp_path / "a.json", tmp_path / "b.json")
    one_line_error(r, "b.json: sampling_seeds must be a list of integers")


def test_compare_of_scores_too_large_to_average_writes_no_nan(tmp_path):
    """Finite scores whose sum overflows passed the finiteness check and printed nan / inf in the table
    (exit 0, with numpy's warnings on stderr)."""
    from omni.eval.report import ablation_table

    with pytest.raises(ValueError, match="row 'b': its scores are too large"):
        ablation_table({"a": [0.5, 0.5, 0.5], "b": [1e308, 1e308, 0.0]})
    with pytest.raises(ValueError, match="its scores are too large"):
        ablation_table({"a": [-1e308, 0.0], "b": [1e308, 0.0]})
    base = {"task": "depth", "n": 3, "seed_start": 7}
    (tmp_path / "a.json").write_text(json.dumps({**base, "scores": {"abs_rel": [0.1, 0.2, 0.3]}}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "scores": {"abs_rel": [1e308, 1e308, 1e308]}}))
    r = invoke("eval", "compare", tmp_path / "a.json", tmp_path / "b.json")
    one_line_error(r, "too large to average")
    assert "nan" not in r.stdout and "inf" not in r.stdout
    # the guard changes no number of valid scores: the table is the bootstrap's, row by row
    from omni.eval.metrics import bootstrap_ci

    a, b = [0.1, 0.5, 0.9, 0.4], [0.3, 0.5, 1.0, 0.2]
    t = ablation_table({"a": a, "b": b})
    ci, d = bootstrap_ci(b), bootstrap_ci([y - x for x, y in zip(a, b, strict=True)])
    assert (t.rows[1].mean, t.rows[1].lo, t.rows[1].hi) == (ci["mean"], ci["lo"], ci["hi"])
    assert (t.rows[1].delta, t.rows[1].delta_lo, t.rows[1].delta_hi) == (d["mean"], d["lo"], d["hi"])




@pytest.mark.parametrize("line,needle", [
    ('{"step": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "RecursionError"),  # a traceback
    ('{"step": 2, "x": ' + "9" * 5000 + "}", "ValueError"),  # its message named neither file nor line
])
def test_curves_name_a_log_line_json_cannot_read(tmp_path, line, needle):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 1, "text_ce": 1.0}) + "\n" + line + "\n" + json.dumps({"step": 3}) + "\n")
    r = invoke("eval", "curves", "--log", log, "--out", tmp_path / "c.png")
    one_line_error(r, f"log.jsonl:2: not JSON ({needle}")
    assert not (tmp_path / "c.png").exists()


def test_curves_name_a_log_that_is_not_text(tmp_path):
    """A binary file given as --log said only "'utf-8' codec can't decode byte ...", naming no file."""
    log = tmp_path / "events.out.tfevents"
    log.write_bytes(b"\x00\xff\xfe\x80 binary")
    r = invoke("eval", "curves", "--log", log, "--out", tmp_path / "c.png")
    one_line_error(r, "events.out.tfevents: not a text log")


def test_compare_refuses_an_empty_names_list(tmp_path):
    """`omni eval compare a b --names ""` fell back to the file names without a word."""
    base = {"task": "vqa", "n": 3, "seed_start": 2_000_000_000, "scores": {"accuracy": [1, 0, 1]}}
    for f in ("a", "b"):
        (tmp_path / f"{f}.json").write_text(json.dumps(base))
    r = invoke("eval", "compare", tmp_path / "a.json", tmp_path / "b.json", "--names", "")
    one_line_error(r, "--names must give 2 distinct names")
    assert invoke("eval", "compare", tmp_path / "a.json", tmp_path / "b.json", "--names", "x,y").exit_code == 0


def test_a_metric_name_with_a_bar_keeps_the_tables_columns(tmp_path):
    """A metric named "x|y" (a hand-made key) split the Markdown header into an extra column; row names were
    escaped already. The table is written whole (atomically) and reads back the same."""
    from omni.eval.report import ablation_table

    t = ablation_table({"a": [1.0, 0.0], "b": [0.0, 1.0]}, metric="x|y")
    header = t.markdown().splitlines()[2]
    assert header.count("|") - header.count("\\|") == 6  # five columns
    paths = t.save(tmp_path, "t")
    assert paths["md"].read_text() == t.markdown() and json.loads(paths["json"].read_text()) == t.to_json()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
