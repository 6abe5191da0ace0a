"""Every CLI error is one line on stderr (no traceback) with exit code 2 (usage) or 1 (failure)."""

import subprocess
import sys

import pytest

from cli_helpers import has_io, run_cli

USAGE = [
    ["quantize", "--format", "fp8"],
    ["quantize", "--mode", "w8a8"],
    ["quantize", "--rotation", "fourier"],
    ["quantize", "--rotation-size", "48"],
    ["quantize", "--windows", "0"],
    ["quantize", "--window", "many"],
    ["eval", "smollm2", "--window", "1"],
    ["quantize", "--out", "somewhere"],                       # the table saves nothing
    ["quantize", "--format", "mxfp4", "--export", "fp-quant"],  # --export without --out
    ["quantize", "--table", "--format", "nvfp4"],
    ["quantize", "--format", "nvfp4", "--rotation", "hadamard", "--out", "ckpt", "--export", "compressed-tensors"],
    ["quantize", "--format", "mxfp4", "--mode", "w4a4", "--act-scale", "static"],
    ["quantize", "--format", "nvfp4", "--weight-method", "floor"],
    ["quantize", "--method", "awq"],
    ["quantize", "--format", "mxfp4", "--method", "mse", "--weight-method", "ceil"],
    ["quantize", "--format", "mxfp4", "--method", "mr-gptq", "--rotation", "none"],
    ["quantize", "--format", "mxfp4", "--method", "gptq", "--calib", "/nonexistent/calib.txt"],
    ["quantize", "--text", "/nonexistent/eval.txt"],
    ["eval"],
    ["eval", "smollm2", "--text", "/nonexistent/eval.txt"],
    ["eval", "/nonexistent/model"],
    ["inspect", "/nonexistent/checkpoint"],
    ["demo", "--rotation", "hadmard"],
    ["demo", "--rotation-size", "48"],
    ["frobnicate"],
    [],
]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv", USAGE, ids=lambda a: " ".join(a) or "no-args")
def test_usage_errors_are_one_line_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, err)
    line = _one_line(err)
    assert line.startswith("fpquant"), line
    assert "error" in line


def test_out_must_be_a_new_or_empty_directory(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "quantize", "--format", "mxfp4", "--out", str(tmp_path))
    assert code == 2
    assert "not an empty directory" in _one_line(err)


def test_missing_model_is_usage(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "no_such_model"), "--text", __file__)
    assert code == 2
    assert "no model at" in _one_line(err)


def test_missing_text_file_is_named_before_the_model_loads(capsys, tmp_path):
    code, _, err = run_cli(capsys, "quantize", str(tmp_path / "no_such_model"), "--format", "mxfp4",
                           "--method", "gptq", "--calib", str(tmp_path / "calib.txt"))
    assert code == 2
    assert _one_line(err) == f"fpquant quantize: error: --calib {tmp_path / 'calib.txt'}: no such file"


def test_directory_without_a_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "quantize", str(tmp_path), "--format", "nvfp4")
    assert code == 1
    assert "no config.json" in _one_line(err)


@pytest.mark.skipif(has_io(), reason="fpquant_ext.io is present: --out works")
def test_out_without_checkpoint_io(capsys, tmp_path):
    code, _, err = run_cli(capsys, "quantize", "--format", "mxfp4", "--out", str(tmp_path / "ckpt"))
    assert code == 1
    assert "fpquant_ext.io" in _one_line(err)


def test_unexpected_failure_is_one_line(capsys, monkeypatch):
    from fpquant_ext import jobs

    def boom(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(jobs, "inspect", boom)  # build_parser reads it on each main()
    code, _, err = run_cli(capsys, "inspect", "x")
    assert code == 1
    assert _one_line(err) == "fpquant inspect: error: RuntimeError: disk on fire (--traceback for details)"


def test_real_process_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "fpquant_ext.cli", "quantize", "--format", "nvfp4",
                           "--rotation-size", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert _one_line(proc.stderr).startswith("fpquant quantize: error: argument --rotation-size")


def test_a_model_directory_with_broken_config_json_is_named(capsys, tmp_path):
    # json.load's own message ("Expecting property name ...") did not say which file it was reading.
    (tmp_path / "config.json").write_text('{"quantization_config": {,}')
    code, _, err = run_cli(capsys, "eval", str(tmp_path), "--text", __file__)
    assert code == 1
    line = _one_line(err)
    assert f"{tmp_path / 'config.json'}: not valid JSON" in line, line


def test_a_model_directory_whose_config_json_is_not_utf8_is_named(capsys, tmp_path):
    # JSON is UTF-8: a file in another encoding is not valid JSON either, and its decode error names no file.
    (tmp_path / "config.json").write_bytes(b'{"quantization_config": "\xff"}')
    code, _, err = run_cli(capsys, "eval", str(tmp_path), "--text", __file__)
    assert code == 1
    line = _one_line(err)
    assert f"{tmp_path / 'config.json'}: not valid JSON" in line, line
