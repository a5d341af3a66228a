import json
import subprocess
import sys

import pytest

from omni.eval.references import references


def test_references_are_model_free_floors():
    r = references(n=24, n_train=60)["metrics"]
    assert set(r) == {"vqa", "spatial", "t2i", "depth", "pose", "nvs", "video", "edit"}
    assert r["pose"]["auc@30"]["mean"] < 0.1  # the cameras of a pair always differ by more than a degree
    assert 0.2 < r["depth"]["delta1"]["mean"] < 0.9  # a constant depth is right on part of each image only
    assert r["t2i"]["pass"]["mean"] < 0.6  # another prompt's image mostly fails this prompt
    for m in r.values():
        for v in m.values():
            assert v["lo"] <= v["mean"] <= v["hi"]


def test_references_cli_rejects_bad_n():
    r = subprocess.run([sys.executable, "-m", "omni.eval.references", "--n", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--n" in r.stderr
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.stdout)
