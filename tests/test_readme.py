"""The README's Python examples run as written (one namespace, in order: the second uses the first's
`ex`), so an API change cannot leave them stale."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_python_examples_run(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2  # the world's example and the engine's
    if not (README.parent / "checkpoints" / "omni-tiny" / "config.json").is_file():
        pytest.skip("needs the shipped checkpoint")
    monkeypatch.chdir(README.parent)  # the examples name checkpoints/omni-tiny from the repository root
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), ns)
    rows = ns["rows"]  # the last example's forks: one answer per plan, the thought only in its own row
    assert set(rows) == {"direct", "+thinking"}
    assert all(isinstance(r.output.text, str) and r.output.text for r in rows.values())
    assert [it.step for it in rows["+thinking"].items if it.step == "think"] == ["think"]
    assert not [it for it in rows["direct"].items if it.step == "think"]
