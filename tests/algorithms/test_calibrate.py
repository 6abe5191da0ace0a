"""Block-by-block calibrated quantization of whole models (GPTQ, MR-GPTQ, hessian scale search)."""

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext.algorithms.calibrate import CalibrationError, _run_block, find_blocks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nn"))
from nn_helpers import TinyNet  # noqa: E402


def _llama(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def _ids(n=12, length=32, vocab=96, seed=1):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _logit_err(model, ref_model, ids):
    with torch.no_grad():
        ref = ref_model(ids).logits
        out = model(ids).logits
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_gptq_model_beats_round_to_nearest_on_held_out_ids(fmt):
    base = _llama()
    calib, held = _ids(seed=1), _ids(n=4, seed=2)
    rtn = copy.deepcopy(base)
    fq.quantize_model(rtn, fq.FP4Config(format=fmt), progress=False)
    gptq = copy.deepcopy(base)
    summary = fq.quantize_model(gptq, fq.FP4Config(format=fmt, algorithm="gptq"), progress=False, calibration=calib)
    assert len(summary.converted) == 14 and len(summary.gptq) == 14
    assert "GPTQ" in str(summary) and "calibrated on 12 samples" in str(summary)
    assert _logit_err(gptq, base, held) < 0.9 * _logit_err(rtn, base, held)


def test_mr_gptq_and_hessian_run_and_help():
    base = _llama()
    calib, held = _ids(n=32, seed=1), _ids(n=4, seed=2)
    rtn = copy.deepcopy(base)
    fq.quantize_model(rtn, fq.FP4Config(rotation="hadamard", rotation_size=32), progress=False)
    mr = copy.deepcopy(base)
    cfg = fq.FP4Config(rotation="hadamard", rotation_size=32, algorithm="gptq", weight_method="mse")
    fq.quantize_model(mr, cfg, progress=False, calibration=calib)
    assert all(m.rotation_matrix is not None for m in mr.modules() if isinstance(m, fq.FP4Linear))
    # Random weights and ids: rotated weights are near Gaussian and inputs weakly correlated, so the margin
    # is smaller than on a real model (docs/quality.md); a Hessian rotated the wrong way loses to RTN.
    assert _logit_err(mr, base, held) < 0.95 * _logit_err(rtn, base, held)
    hess = copy.deepcopy(base)
    fq.quantize_model(hess, fq.FP4Config(format="nvfp4", weight_method="hessian"), progress=False, calibration=calib)
    assert {m.qweight.method for m in hess.modules() if isinstance(m, fq.FP4Linear)} == {"hessian"}


def test_true_sequential_uses_the_quantized_outputs():
    """With true_sequential, layers after the first group of a block see the quantized q/k/v: their
    Hessians differ from one pass over the unquantized block, so the codes differ."""
    base = _llama()
    calib = _ids(seed=1)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    cfg = fq.FP4Config(algorithm="gptq")
    fq.quantize_model(a, cfg, progress=False, calibration=calib, true_sequential=True)
    fq.quantize_model(b, cfg, progress=False, calibration=calib, true_sequential=False)
    qa, qb = a.model.layers[0].self_attn, b.model.layers[0].self_attn
    assert torch.equal(qa.q_proj.qweight.codes, qb.q_proj.qweight.codes)  # the first group: same inputs
    assert not torch.equal(qa.o_proj.qweight.codes, qb.o_proj.qweight.codes)


def test_deterministic_and_device_argument():
    base = _llama()
    calib = _ids(seed=1)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    fq.quantize_model(a, fq.FP4Config(algorithm="gptq"), progress=False, calibration=calib)
    fq.quantize_model(b, fq.FP4Config(algorithm="gptq"), progress=False, calibration=list(calib), device="cpu")
    for (n, m), (_, m2) in zip(a.named_modules(), b.named_modules()):
        if isinstance(m, fq.FP4Linear):
            assert torch.equal(m.qweight.codes, m2.qweight.codes), n


def test_training_mode_model_calibrates_in_eval_mode():
    # Dropout on (a model built from its config is in training mode) must not make GPTQ random; the mode is
    # given back afterwards.
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attention_dropout=0.5)
    base = transformers.LlamaForCausalLM(cfg).train()
    codes = []
    for rng_seed in (1, 2):
        torch.manual_seed(rng_seed)
        m = copy.deepcopy(base)
        fq.quantize_model(m, fq.FP4Config(algorithm="gptq"), progress=False, calibration=_ids())
        assert m.training
        codes.append([x.qweight.codes for x in m.modules() if isinstance(x, fq.FP4Linear)])
    assert len(codes[0]) == 14 and all(torch.equal(a, b) for a, b in zip(*codes))


def test_calibration_ids_are_checked_against_the_model():
    base = _llama()
    ids = _ids()
    cases = [([ids[i:i + 1] for i in range(4)], r"sample 0: a language model takes 1-D integer token ids .* "
                                                  r"of shape \[1, 32\]"),
             (ids.float(), r"got torch.float32 of shape \[32\]"),
             (ids[None], r"of shape \[12, 32\]"),
             ([ids[0], ids[1] + 96], r"sample 1: token ids must lie in \[0, 96\) \(the model's vocabulary\)"),
             ([ids[0] - 100], r"token ids must lie in \[0, 96\)")]
    for calibration, match in cases:
        with pytest.raises(CalibrationError, match=match):
            fq.quantize_model(copy.deepcopy(base), fq.FP4Config(algorithm="gptq"), progress=False,
                              calibration=calibration)
    with pytest.raises(CalibrationError, match="device= must not be the meta device"):
        fq.quantize_model(copy.deepcopy(base), fq.FP4Config(algorithm="gptq"), progress=False, calibration=ids,
                          device="meta")
    # A part left on meta (accelerate's disk offload keeps weights there): only the first parameter was
    # looked at, and GPTQ then failed on meta weights half-way through.
    part = copy.deepcopy(base)
    name = next(n for n, _ in part.named_parameters() if n.endswith("layers.1.mlp.down_proj.weight"))
    part.get_submodule(name.rsplit(".", 1)[0]).to("meta")
    with pytest.raises(CalibrationError, match=f"{name} is on the meta device"):
        fq.quantize_model(part, fq.FP4Config(algorithm="gptq"), progress=False, calibration=ids)


def test_blocks_that_do_not_feed_each_other_are_refused():
    # A ModuleList of parallel heads is not a stack of layers: calibrating head 1 on head 0's output would
    # be silently wrong.
    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
            self.heads = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(64, 64)) for _ in range(3))

        def forward(self, x):
            h = self.body(x)
            return sum(head(h) for head in self.heads)

    torch.manual_seed(0)
    with pytest.raises(CalibrationError, match="does not take the first one's output"):
        fq.quantize_model(Heads(), fq.FP4Config(algorithm="gptq"), progress=False, calibration=torch.randn(4, 8, 64))


def test_a_model_that_is_not_from_transformers():
    """TinyNet: blocks in an nn.ModuleList, layers outside them (converted without calibration), an odd-K
    layer (skipped), forward(x) without use_cache."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    calib = torch.randn(8, 16, 64)  # TinyNet takes features, not ids
    summary = fq.quantize_model(net, fq.FP4Config(algorithm="gptq"), progress=False, calibration=calib)
    names = {c.name for c in summary.converted}
    assert {"blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down", "proj_odd"} <= names
    assert any("outside the blocks converted without calibration" in n for n in summary.notes)
    assert set(summary.gptq) == {"blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down"}
    assert dict(summary.skipped).keys() >= {"odd", "lm_head"}
    # Feature samples are not token ids: the note counted their 8 x 16 x 64 elements as 8192 "tokens".
    assert "calibrated on 8 samples of shape [16, 64]" in str(summary) and "tokens" not in str(summary)


def test_errors():
    base = _llama()
    with pytest.raises(CalibrationError, match="needs calibration data"):
        fq.quantize_model(copy.deepcopy(base), fq.FP4Config(algorithm="gptq"), progress=False)
    with pytest.raises(CalibrationError, match="must be a non-empty tensor"):
        fq.quantize_model(copy.deepcopy(base), fq.FP4Config(algorithm="gptq"), progress=False,
                          calibration=["some text"])
    with pytest.raises(CalibrationError, match="empty"):
        fq.quantize_model(copy.deepcopy(base), fq.FP4Config(algorithm="gptq"), progress=False, calibration=[])
    with pytest.raises(CalibrationError, match="repeated blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(32, 32)))
    done = copy.deepcopy(base)
    fq.quantize_model(done, fq.FP4Config(), progress=False)
    with pytest.raises(CalibrationError, match=r"already holds 14 FP4Linear layers \(it was quantized before\); "
                                               r"start from a fresh copy"):
        fq.quantize_model(done, fq.FP4Config(algorithm="gptq"), progress=False, calibration=_ids())
    with pytest.raises(ValueError, match="applies to modes 'w4a16' and 'w4a4'"):
        fq.FP4Config(algorithm="gptq", mode="qat")
    with pytest.raises(ValueError, match="weighs errors by the Hessian"):
        fq.FP4Config(algorithm="gptq", weight_method="hessian")
    with pytest.raises(ValueError, match="gptq_block_size"):
        fq.FP4Config(algorithm="gptq", format="mxfp4", gptq_block_size=48)
    with pytest.raises(ValueError, match="gptq_damp"):
        fq.FP4Config(algorithm="gptq", gptq_damp=0.0)


@pytest.mark.parametrize("export", ["fp-quant", "compressed-tensors"])
def test_gptq_model_round_trips_through_both_checkpoint_formats(tmp_path, export):
    base = _llama()
    model = copy.deepcopy(base)
    cfg = fq.FP4Config(format="nvfp4", algorithm="gptq", weight_method="mse")
    fq.quantize_model(model, cfg, progress=False, calibration=_ids(seed=1))
    fq.save_quantized(model, tmp_path, export=export, config=cfg, model_config=base.config.to_dict())
    loaded = fq.load_quantized(_llama(seed=5), tmp_path)  # another random init: everything comes from the file
    ids = _ids(n=2, seed=3)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_w4a4_static_activation_scales_are_calibrated_on_the_way():
    base = _llama()
    model = copy.deepcopy(base)
    cfg = fq.FP4Config(format="nvfp4", mode="w4a4", act_global_scale="static", algorithm="gptq")
    fq.quantize_model(model, cfg, progress=False, calibration=_ids(seed=1))
    layers = [m for m in model.modules() if isinstance(m, fq.FP4Linear)]
    assert layers and all(torch.isfinite(m.act_global_scale).all() and not m._calibrating for m in layers)
    with torch.no_grad():
        assert torch.isfinite(model(_ids(n=2, seed=2)).logits).all()


@pytest.mark.parametrize("device", [None, pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_failure_leaves_the_model_as_it_was(device):
    """A layer that fails late (here a NaN weight in the last block) used to leave the earlier layers
    converted: a half-quantized model that a retry refused or, worse, that ran on silently. With CPU offload
    (device="cuda") the layers put back are on the CPU again."""
    base = _llama()
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with pytest.raises(ValueError, match="weight holds NaN or inf"):
        fq.quantize_model(model, fq.FP4Config(algorithm="gptq"), progress=False, calibration=_ids(n=4),
                          device=device)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(isinstance(m, fq.FP4Linear) for m in model.modules())
    after = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert after.keys() == linears.keys() and all(after[n] is linears[n] for n in linears)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = base.model.layers[1].mlp.down_proj.weight[0, 0]
    assert _logit_err(model, base, _ids(n=2, seed=3)) == 0.0


def test_calibration_data_of_the_wrong_form_is_explained():
    """One 1-D tensor of ids (a whole tokenized text) used to be split into 0-d "samples" and refused as
    'got Tensor []'; a number as 'int object is not iterable'; ids of a narrow integer dtype passed the
    checks and failed inside the embedding."""
    base = _llama()
    cfg = fq.FP4Config(algorithm="gptq")
    ids = _ids(n=4)
    with pytest.raises(CalibrationError, match=r"one 1-D tensor of 32 values: .*\[samples, tokens\]"):
        fq.quantize_model(copy.deepcopy(base), cfg, progress=False, calibration=ids[0])
    with pytest.raises(CalibrationError, match="a tensor .* or a sequence of tensors, got int"):
        fq.quantize_model(copy.deepcopy(base), cfg, progress=False, calibration=5)
    # A tokenizer's output (a dict): its keys were taken as the samples ('got str').
    with pytest.raises(CalibrationError, match=r"a mapping \(keys 'input_ids', 'attention_mask'\): pass the token "
                                               r"ids, e.g. calibration=batch\['input_ids'\]"):
        fq.quantize_model(copy.deepcopy(base), cfg, progress=False,
                          calibration={"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    ref = copy.deepcopy(base)
    fq.quantize_model(ref, cfg, progress=False, calibration=ids)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        m = copy.deepcopy(base)
        fq.quantize_model(m, cfg, progress=False, calibration=ids.to(dtype))
        assert all(torch.equal(a.qweight.codes, b.qweight.codes) for a, b in zip(
            (x for x in m.modules() if isinstance(x, fq.FP4Linear)),
            (x for x in ref.modules() if isinstance(x, fq.FP4Linear))))


def test_blocks_holding_a_longer_module_list_are_the_stack():
    """A mixture-of-experts decoder holds, in each layer, an nn.ModuleList of experts longer than the stack
    of layers (Qwen-MoE: 60 experts, 24 layers). The largest ModuleList was taken as the blocks, so the
    experts of layer 0 were refused as 'not a stack of decoder layers'; the outermost list is the stack."""
    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(64)
            self.experts = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(4))

        def forward(self, x):
            h = self.norm(x)
            return x + sum(e(h) for e in self.experts) / 4

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Experts() for _ in range(3))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    torch.manual_seed(0)
    net = Net().eval()
    assert find_blocks(net)[0] == "layers"
    summary = fq.quantize_model(net, fq.FP4Config(algorithm="gptq"), progress=False, calibration=torch.randn(4, 8, 64))
    assert len(summary.gptq) == 12 and "blocks: layers (3)" in str(summary)


@pytest.mark.parametrize("cfg", [fq.FP4Config(algorithm="gptq"), fq.FP4Config(weight_method="hessian")])
def test_non_finite_activations_name_the_layer(cfg):
    """Calibration inputs that overflow (inf / NaN activations) used to fail as 'scale search: the Hessian
    holds NaN or inf', naming no layer."""
    model = _llama()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(3e38)  # finite, but its outputs overflow
    with pytest.raises(CalibrationError, match=r"model\.layers\.1\.self_attn\.q_proj: its inputs on the calibration "
                                               r"data hold NaN or inf"):
        fq.quantize_model(model, cfg, progress=False, calibration=_ids(n=2))
    assert not any(isinstance(m, fq.FP4Linear) for m in model.modules())


def test_each_module_gets_its_own_mode_back():
    """model.train(mode) afterwards gave every submodule the model's mode: a part the user had put in eval
    mode (frozen dropout / norms) came back in training mode."""
    model = _llama().train()
    model.model.layers[1].eval()
    before = {n: m.training for n, m in model.named_modules()}
    fq.quantize_model(model, fq.FP4Config(weight_method="hessian"), progress=False, calibration=_ids(n=2))
    after = {n: m.training for n, m in model.named_modules()}
    assert all(after[n] == before[n] for n in before if n in after)
    assert not any(m.training for m in model.model.layers[1].modules())  # the new FP4Linear layers too


class _MoE(torch.nn.Module):
    """A mixture-of-experts block: every token to expert 0, except each sample's first token, which goes to
    expert 1 (a few tokens: a rank-deficient Hessian); no token to expert 2. ``empty``: how an expert without
    tokens is treated: "skip"ped, called on an "empty" batch (some implementations do), or called on every
    token scaled by its routing weight 0 ("zeros")."""

    def __init__(self, empty):
        super().__init__()
        self.empty = empty
        self.norm = torch.nn.LayerNorm(64)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(3))

    def forward(self, x):
        h = self.norm(x).reshape(-1, 64)
        route = torch.zeros(h.shape[0], dtype=torch.long)
        route[0] = 1
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            idx = (route == e).nonzero()[:, 0]
            if idx.numel() or self.empty == "empty":
                out.index_add_(0, idx, expert(h[idx]))
            elif self.empty == "zeros":
                out += expert(h * 0.0) * 0.0
        return x + out.reshape(x.shape)


class _MoENet(torch.nn.Module):
    def __init__(self, empty):
        super().__init__()
        self.layers = torch.nn.ModuleList(_MoE(empty) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("empty", ["skip", "empty", "zeros"])
@pytest.mark.parametrize("cfg", [fq.FP4Config(algorithm="gptq"),
                                 fq.FP4Config(format="nvfp4", algorithm="gptq"),
                                 fq.FP4Config(algorithm="gptq", weight_method="mse", rotation="hadamard",
                                              rotation_size=32),
                                 fq.FP4Config(format="nvfp4", weight_method="hessian")])
def test_an_expert_without_calibration_tokens_is_rounded_to_nearest(cfg, empty):
    """An expert no calibration token is routed to has no Hessian: it was refused ('never ran') or, called on
    an empty batch, failed on the 0 / 0 Hessian (on zeros, GPTQ reported NaN errors and 'hessian' took the rule's
    scale, ties all). It gets round to nearest with the scale rule the layers
    outside the blocks get, and is named in a warning and in the summary; an expert with fewer tokens than
    inputs (rank-deficient Hessian) is calibrated as usual."""
    torch.manual_seed(0)
    base = _MoENet(empty).eval()
    calib, held = torch.randn(8, 16, 64), torch.randn(2, 16, 64)
    model = copy.deepcopy(base)
    with pytest.warns(RuntimeWarning, match=r"saw no calibration token.*layers\.0\.experts\.2, layers\.1\.experts\.2"):
        summary = fq.quantize_model(model, cfg, progress=False, calibration=calib)
    assert any("layers.0.experts.2, layers.1.experts.2" in n for n in summary.notes)
    rtn = copy.deepcopy(base)
    method = "mse" if cfg.weight_method == "hessian" else cfg.weight_method
    fq.quantize_model(rtn, dataclasses.replace(cfg, algorithm="rtn", weight_method=method), progress=False)
    for i in range(2):
        got, want = model.layers[i].experts[2].qweight, rtn.layers[i].experts[2].qweight
        assert torch.equal(got.codes, want.codes) and torch.equal(got.scales.view(torch.uint8),
                                                                  want.scales.view(torch.uint8))
        assert got.method == want.method
    for m in model.modules():
        if isinstance(m, fq.FP4Linear):
            assert torch.isfinite(m.qweight.dequantize()).all()
    if cfg.algorithm == "gptq":
        assert set(summary.gptq) == {f"layers.{i}.experts.{e}" for i in range(2) for e in range(2)}
        few = summary.gptq["layers.0.experts.1"]  # 8 tokens for K = 64
        assert few["proxy_error"] < few["rtn_proxy_error"]
    with torch.no_grad():
        out, ref = model(held), base(held)
    assert torch.isfinite(out).all() and float((out - ref).norm() / ref.norm()) < 0.2


def test_layers_left_without_a_static_activation_scale_are_named():
    """W4A4 static NVFP4: an expert no calibration token reaches gets no activation scale, and fails at
    inference once text reaches it; the note blamed 'layers outside the blocks' (here there are none)."""
    torch.manual_seed(0)
    model = _MoENet("skip").eval()
    cfg = fq.FP4Config(format="nvfp4", mode="w4a4", act_global_scale="static", algorithm="gptq")
    with pytest.warns(RuntimeWarning, match="saw no calibration token"):
        summary = fq.quantize_model(model, cfg, progress=False, calibration=torch.randn(8, 16, 64))
    notes = [n for n in summary.notes if "static activation scale" in n]
    assert len(notes) == 1 and "outside the blocks" not in notes[0]
    assert "2 layers have no static activation scale yet: layers.0.experts.2, layers.1.experts.2" in notes[0]
    assert torch.isnan(model.layers[1].experts[2].act_global_scale).all()
    assert torch.isfinite(model.layers[1].experts[1].act_global_scale).all()


def test_a_static_activation_scale_from_zero_inputs_only_is_named():
    # An expert called on every token times its routing weight 0 sees zeros only: its static scale comes out
    # as the all-zero input's 1, finite, so the note on missing scales did not name it.
    torch.manual_seed(0)
    model = _MoENet("zeros").eval()
    cfg = fq.FP4Config(format="nvfp4", mode="w4a4", act_global_scale="static", algorithm="gptq")
    with pytest.warns(RuntimeWarning, match="saw no calibration token"):
        summary = fq.quantize_model(model, cfg, progress=False, calibration=torch.randn(8, 16, 64))
    assert float(model.layers[1].experts[2].act_global_scale) == 1.0
    notes = [n for n in summary.notes if "static activation scale" in n]
    assert notes == [n for n in notes if "from zero inputs only" in n] and len(notes) == 1, notes
    assert "2 layers" in notes[0] and "layers.0.experts.2, layers.1.experts.2" in notes[0]


def test_without_device_each_block_stays_where_it_is(monkeypatch):
    """device=None moved every block to the device of the model's first parameter and then back there: a
    model spread over several GPUs had its later blocks moved to the first GPU, and left there. Each block is
    now computed where it is, its inputs moved to it. CPU only here: no block may move at all, a block's inputs
    go to the block's device (a meta block gets meta inputs), and the codes are those of an explicit device."""
    base = _llama()
    moves = []
    to = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        if isinstance(self, type(base.model.layers[0])):
            moves.append(args or kwargs)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    fq.quantize_model(a, fq.FP4Config(algorithm="gptq"), progress=False, calibration=_ids(n=4))
    assert moves == []
    fq.quantize_model(b, fq.FP4Config(algorithm="gptq"), progress=False, calibration=_ids(n=4), device="cpu")
    assert len(moves) == 4  # offload: each block to `device` and back
    for m, m2 in zip(a.modules(), b.modules()):
        if isinstance(m, fq.FP4Linear):
            assert torch.equal(m.qweight.codes, m2.qweight.codes)
    out = _run_block(torch.nn.Linear(64, 64, device="meta"), [((torch.randn(2, 64),), {})], None, None)
    assert out[0].device.type == "meta"


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_a_model_spread_over_two_gpus_stays_spread():
    class Spread(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
                for _ in range(2))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x.to(layer[0].weight.device))
            return x

    torch.manual_seed(0)
    model = Spread().eval()
    model.layers[0].to("cuda:0")
    model.layers[1].to("cuda:1")
    base = copy.deepcopy(model)
    fq.quantize_model(model, fq.FP4Config(algorithm="gptq"), progress=False, calibration=torch.randn(8, 16, 64))
    for i in range(2):
        assert {p.device for p in model.layers[i].parameters()} == {torch.device(f"cuda:{i}")}
        assert {b.device for b in model.layers[i].buffers()} == {torch.device(f"cuda:{i}")}
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        out, ref = model(x), base(x)
    assert out.device == torch.device("cuda:1") and float((out - ref).norm() / ref.norm()) < 0.2
