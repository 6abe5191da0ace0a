"""Every Python example in docs/*.md runs as written (on the CPU, with nothing downloaded)."""

import importlib.util
import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _examples():
    for doc in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)):
            yield pytest.param(doc.name, code, id=f"{doc.stem}-{i}")


@pytest.mark.parametrize("doc, code", list(_examples()))
def test_doc_python_example(doc, code, tmp_path, monkeypatch):
    if "transformers" in code and importlib.util.find_spec("transformers") is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{doc}: transformers is not installed")
        pytest.skip("transformers is not installed")
    monkeypatch.chdir(tmp_path)  # examples that save write into the working directory
    exec(compile(code, doc, "exec"), {"__name__": "doc_example"})
