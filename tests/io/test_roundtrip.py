"""save_quantized -> load_quantized reproduces the model's outputs bit for bit, in each format; saving never
loses a model it should not replace."""

import json
import os

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext.io import CheckpointError, inspect_checkpoint, load_quantized, save_quantized

from io_helpers import converted, fp4_layers, make_model, read

pytest.importorskip("safetensors")

CASES = [
    ("fp-quant", dict(format="mxfp4")),
    ("fp-quant", dict(format="mxfp4", weight_method="quest", rotation="hadamard", rotation_size=32)),
    ("fp-quant", dict(format="nvfp4", rotation="hadamard", rotation_size=32)),
    ("fp-quant", dict(format="nvfp4", mode="w4a4", rotation="dct", rotation_size=32)),
    ("fp-quant", dict(format="mxfp4", mode="w4a4", weight_method="ceil", act_method="ceil")),
    ("compressed-tensors", dict(format="nvfp4")),
    ("compressed-tensors", dict(format="mxfp4")),
    ("compressed-tensors", dict(format="nvfp4", mode="w4a4")),
    ("compressed-tensors", dict(format="nvfp4", mode="w4a4", act_global_scale="static", act_global_scale_value=50.0)),
    ("compressed-tensors", dict(format="mxfp4", mode="w4a4")),
]


@pytest.mark.parametrize("export,kwargs", CASES, ids=[f"{e}-{'-'.join(map(str, k.values()))}" for e, k in CASES])
@pytest.mark.parametrize("meta", [False, True], ids=["cpu", "meta"])
def test_round_trip_bit_exact(tmp_path, export, kwargs, meta):
    config = fq.FP4Config(**kwargs)
    model = converted(config)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    expected = model(x)
    save_quantized(model, str(tmp_path), export, config, {"model_type": "net"})

    fresh = make_model(seed=1, device="meta" if meta else None)
    assert load_quantized(fresh, str(tmp_path)) is fresh
    assert torch.equal(fresh(x), expected)
    got, want = fp4_layers(fresh), fp4_layers(model)
    assert sorted(got) == sorted(want) == ["blocks.0.down", "blocks.0.up", "blocks.1.down", "blocks.1.up", "side"]
    for name, layer in got.items():
        assert layer.mode == config.mode
        assert torch.equal(layer.qweight.dequantize(), want[name].qweight.dequantize())
    assert "blocks.0.up" in inspect_checkpoint(str(tmp_path))


def test_unconverted_layers_and_metadata(tmp_path):
    config = fq.FP4Config(format="mxfp4", rotation="hadamard", rotation_size=64, rotation_fallback="skip")
    model = converted(config)  # side (K=96) is skipped: no rotation of 64 divides 96
    save_quantized(model, str(tmp_path), "fp-quant", config, {"model_type": "net", "hidden_size": 64})
    cfg, tensors = read(str(tmp_path))
    qc = cfg["quantization_config"]
    assert cfg["hidden_size"] == 64
    assert qc["modules_to_not_convert"] == ["lm_head", "side"]
    assert qc["hadamard_group_size"] == 64 and qc["transform_init"] == "hadamard"
    assert tensors["side.weight"].dtype == torch.bfloat16 and "side.qweight" not in tensors
    fresh = make_model(seed=3)
    load_quantized(fresh, str(tmp_path))
    assert isinstance(fresh.side, torch.nn.Linear) and torch.equal(fresh.side.weight, model.side.weight)


def test_mixed_rotation_sizes_refused_by_fp_quant(tmp_path):
    config = fq.FP4Config(format="mxfp4", rotation="hadamard", rotation_size=64)  # side shrinks to 32
    with pytest.raises(ValueError, match="one hadamard_group_size"):
        save_quantized(converted(config), str(tmp_path), "fp-quant", config)


def test_rotation_refused_by_compressed_tensors(tmp_path):
    config = fq.FP4Config(format="nvfp4", rotation="hadamard", rotation_size=32)
    with pytest.raises(ValueError, match="blocks.0.up is rotated"):
        save_quantized(converted(config), str(tmp_path), "compressed-tensors", config)


def test_mode_override_and_pseudo_export(tmp_path):
    # the qat-only gradient flag must not follow the weight into the modes it loads as
    config = fq.FP4Config(format="nvfp4", mode="qat", mask_saturated_gradients=True)
    model = converted(config)
    save_quantized(model, str(tmp_path), "fp-quant", config)
    fresh = make_model(seed=2)
    load_quantized(fresh, str(tmp_path))
    assert fresh.blocks[0]["up"].mode == "w4a16"
    want = model.blocks[0]["up"].quantized_weight().dequantize()
    assert torch.equal(fresh.blocks[0]["up"].qweight.dequantize(), want)
    fresh = make_model(seed=2)
    load_quantized(fresh, str(tmp_path), mode="w4a4")
    assert fresh.blocks[0]["up"].mode == "w4a4"


def test_tiny_llama_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    config = fq.FP4Config(format="nvfp4", rotation="hadamard", rotation_size=64)
    fq.quantize_model(model, config, progress=False)
    ids = torch.randint(0, 64, (1, 12))
    expected = model(ids).logits
    save_quantized(model, str(tmp_path), "fp-quant", config, cfg.to_dict())
    torch.manual_seed(1)
    fresh = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    load_quantized(fresh, str(tmp_path))
    assert len(fp4_layers(fresh)) == 14
    assert torch.equal(fresh(ids).logits, expected)


def test_saving_again_replaces_the_earlier_checkpoint_and_its_shards(tmp_path):
    # An earlier quantized checkpoint in the directory, sharded (as other tools write them): the new save
    # must be what loads, not the index and shards left behind, and no temporary file stays.
    ckpt = str(tmp_path)
    old_config = fq.FP4Config(format="mxfp4")
    save_quantized(converted(old_config, seed=5), ckpt, "fp-quant", old_config)
    cfg, tensors = read(ckpt)
    half = sorted(tensors)[: len(tensors) // 2]
    from safetensors.torch import save_file
    shards = {"model-00001-of-00002.safetensors": {k: tensors[k] for k in half},
              "model-00002-of-00002.safetensors": {k: v for k, v in tensors.items() if k not in half}}
    for name, part in shards.items():
        save_file(part, str(tmp_path / name))
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, part in shards.items() for k in part}}))
    (tmp_path / "tokenizer.json").write_text("{}")
    config = fq.FP4Config(format="nvfp4")
    model = converted(config, seed=6)
    save_quantized(model, ckpt, "fp-quant", config)
    assert sorted(os.listdir(ckpt)) == ["config.json", "model.safetensors", "tokenizer.json"]
    fresh = make_model(seed=7)
    load_quantized(fresh, ckpt)
    assert fresh.blocks[0]["up"].format == "nvfp4"
    assert torch.equal(fresh.blocks[0]["up"].qweight.dequantize(), model.blocks[0]["up"].qweight.dequantize())


@pytest.mark.parametrize("existing", ["unquantized", "weights_only", "bad_json"])
def test_never_overwrites_a_model_that_is_not_a_quantized_checkpoint(tmp_path, existing):
    # Most likely the directory of the model being quantized: its files must stay as they were.
    files = {"model.safetensors": b"original weights"}
    if existing == "unquantized":
        files["config.json"] = json.dumps({"model_type": "llama"}).encode()
    if existing == "bad_json":
        files["config.json"] = b"{not json"
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    config = fq.FP4Config(format="mxfp4")
    with pytest.raises(CheckpointError, match="not overwriting it; save the quantized checkpoint to another directory"):
        save_quantized(converted(config), str(tmp_path), "fp-quant", config)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    with pytest.raises(CheckpointError, match="is not a directory"):
        save_quantized(converted(config), str(tmp_path / "model.safetensors"), "fp-quant", config)


def test_a_layer_under_two_names_loads_under_both(tmp_path):
    config = fq.FP4Config(format="mxfp4")
    model = converted(config)
    save_quantized(model, str(tmp_path), "fp-quant", config)
    fresh = make_model(seed=3)
    fresh.blocks[0]["alias"] = fresh.blocks[0]["up"]  # one module, two attributes of one parent
    load_quantized(fresh, str(tmp_path))
    assert fresh.blocks[0]["alias"] is fresh.blocks[0]["up"]
    assert torch.equal(fresh.blocks[0]["up"].qweight.dequantize(), model.blocks[0]["up"].qweight.dequantize())


def test_the_config_must_describe_the_layers(tmp_path):
    # load_quantized rebuilds the modules the recorded config describes: a config that disagrees with the
    # layers would load as other modules (other outputs) without a word.
    model = converted(fq.FP4Config(format="nvfp4"))
    for wrong, what in [(fq.FP4Config(format="nvfp4", mode="w4a4"), "mode 'w4a16', the config says 'w4a4'"),
                        (fq.FP4Config(format="mxfp4"), "format 'nvfp4', the config says 'mxfp4'")]:
        with pytest.raises(ValueError, match=f"layer blocks.0.up has {what}"):
            save_quantized(model, str(tmp_path / "x"), "fp-quant", wrong)
    w4a4 = fq.FP4Config(format="nvfp4", mode="w4a4", act_global_scale="static", act_global_scale_value=20.0)
    with pytest.raises(ValueError, match="act_global_scale 'static', the config says 'dynamic'"):
        save_quantized(converted(w4a4), str(tmp_path / "y"), "fp-quant", fq.FP4Config(format="nvfp4", mode="w4a4"))
    rotated = fq.FP4Config(format="mxfp4", rotation="dct", rotation_size=32)
    with pytest.raises(ValueError, match="rotation 'dct', the config says 'hadamard'"):
        save_quantized(converted(rotated), str(tmp_path / "z"), "fp-quant",
                       fq.FP4Config(format="mxfp4", rotation="hadamard", rotation_size=32))
    assert not any(tmp_path.iterdir())


def _tied_llama(seed):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model, cfg


def test_tied_embeddings_are_stored_once_and_tied_again(tmp_path):
    from safetensors.torch import load_file, save_file
    model, cfg = _tied_llama(0)
    config = fq.FP4Config(format="nvfp4")
    fq.quantize_model(model, config, progress=False)
    ids = torch.randint(0, 64, (1, 10))
    expected = model(ids).logits
    save_quantized(model, str(tmp_path), "fp-quant", config, cfg.to_dict())
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored
    fresh, _ = _tied_llama(1)
    load_quantized(fresh, str(tmp_path))
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert torch.equal(fresh(ids).logits, expected)
    # a checkpoint holding only the other name, or both names (equal), loads too; both names unequal is an error
    emb = stored.pop("model.embed_tokens.weight")
    for extra, ok in [({"lm_head.weight": emb}, True),
                      ({"lm_head.weight": emb.clone(), "model.embed_tokens.weight": emb}, True),
                      ({"lm_head.weight": emb + 1, "model.embed_tokens.weight": emb}, False)]:
        save_file({**stored, **extra}, str(tmp_path / "model.safetensors"))
        fresh, _ = _tied_llama(2)
        if ok:
            load_quantized(fresh, str(tmp_path))
            assert torch.equal(fresh(ids).logits, expected)
        else:
            with pytest.raises(CheckpointError, match="differ in the checkpoint, but the model ties them"):
                load_quantized(fresh, str(tmp_path))


def test_metadata_with_an_ignored_gradient_flag_loads():
    # Earlier versions accepted mask_saturated_gradients in w4a16 / w4a4 (and ignored it); FP4Config now
    # refuses it there, but a checkpoint that recorded it still loads.
    from fpquant_ext.io._layers import config_from_metadata, metadata
    meta = metadata(fq.FP4Config(format="nvfp4", mode="qat", mask_saturated_gradients=True))
    meta["mode"] = "w4a16"
    config = config_from_metadata(meta)
    assert (config.mode, config.mask_saturated_gradients) == ("w4a16", False)


def test_a_layer_under_two_names_is_saved_once(tmp_path):
    # One module under two names (shared layers): its tensors are written once, under the first name, as
    # transformers writes shared modules; written under both, the checkpoint did not load back.
    config = fq.FP4Config(format="mxfp4")
    model = converted(config)
    model.blocks[0]["alias"] = model.blocks[0]["up"]
    save_quantized(model, str(tmp_path), "fp-quant", config)
    _, tensors = read(str(tmp_path))
    assert "blocks.0.up.qweight" in tensors and not any(k.startswith("blocks.0.alias.") for k in tensors)
    fresh = make_model(seed=3)
    fresh.blocks[0]["alias"] = fresh.blocks[0]["up"]
    load_quantized(fresh, str(tmp_path))
    assert fresh.blocks[0]["alias"] is fresh.blocks[0]["up"]
    assert torch.equal(fresh.blocks[0]["up"].qweight.dequantize(), model.blocks[0]["up"].qweight.dequantize())


@pytest.mark.parametrize("meta", [False, True], ids=["cpu", "meta"])
def test_tied_parameters_stay_one_parameter(tmp_path, meta):
    # Loaded onto the meta device the tensors are assigned, not copied: each name used to get a Parameter of
    # its own (same memory, two parameters: an optimizer steps the tied weight twice).
    def tied(seed, device=None):
        model = make_model(seed, device=device)
        model.lm_head.weight = model.embed.weight
        return model
    config = fq.FP4Config(format="nvfp4")
    model = tied(0)
    fq.quantize_model(model, config, progress=False)
    save_quantized(model, str(tmp_path), "compressed-tensors", config)
    fresh = tied(1, "meta" if meta else None)
    load_quantized(fresh, str(tmp_path))
    assert fresh.lm_head.weight is fresh.embed.weight
    assert fresh.embed.weight.requires_grad
    assert len(list(fresh.parameters())) == len(list(model.parameters()))
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), model(x))


def test_a_model_config_json_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    # It used to fail in json.dump after model.safetensors.tmp was written, leaving it (the size of the
    # model) and a partial config.json.tmp in the directory.
    config = fq.FP4Config(format="nvfp4")
    save_quantized(converted(config), str(tmp_path), "fp-quant", config, {"model_type": "net"})
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="save_quantized: model_config cannot be written as JSON"):
        save_quantized(converted(config, seed=3), str(tmp_path), "fp-quant", config,
                       {"model_type": "net", "dtype": torch.bfloat16})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


@pytest.mark.parametrize("other", ["side", "side_proj"])
def test_an_unconverted_name_that_also_names_a_converted_layer_is_refused_by_fp_quant(tmp_path, other):
    # FP-Quant skips every Linear in whose name a modules_to_not_convert entry is found (re.search), and our
    # loader matches entries as name components: "side", left unconverted, also names blocks.0.side and
    # blocks.0.side_proj, converted. FP-Quant would build them as float layers, and blocks.0.side did not
    # even load back here.
    def build(seed):
        model = make_model(seed)
        model.blocks[0][other] = torch.nn.Linear(64, 64).to(torch.bfloat16)
        return model
    config = fq.FP4Config(format="mxfp4", rotation="hadamard", rotation_size=64, rotation_fallback="skip")
    model = build(0)
    fq.quantize_model(model, config, progress=False)  # side (K=96) is skipped, blocks.0.{other} converted
    with pytest.raises(ValueError, match=f"modules_to_not_convert entry 'side' .* also names blocks.0.{other},"):
        save_quantized(model, str(tmp_path / "x"), "fp-quant", config)
    assert not (tmp_path / "x").exists()
    config = fq.FP4Config(format="mxfp4")
    model = build(0)
    fq.quantize_model(model, config, progress=False)
    model.blocks[0]["ok_side"] = torch.nn.Linear(64, 64).to(torch.bfloat16)  # unconverted, names nothing else
    save_quantized(model, str(tmp_path / "y"), "fp-quant", config)


@pytest.mark.parametrize("export", ["fp-quant", "compressed-tensors"])
def test_uncalibrated_static_activation_scales_are_refused(tmp_path, export):
    # Such a model refuses to run; the FP-Quant export used to write FP-Quant's default act_global_scale 3
    # instead, which loaded back as a calibrated static scale: a model that runs, with other outputs.
    config = fq.FP4Config(format="nvfp4", mode="w4a4", act_global_scale="static")
    with pytest.raises(ValueError, match="layer blocks.0.up has act_global_scale='static' but no calibrated value"):
        save_quantized(converted(config), str(tmp_path / "x"), export, config)
    assert not (tmp_path / "x").exists()


def test_a_model_whose_every_linear_is_converted_keeps_its_dtype(tmp_path):
    # The model dtype (FP-Quant's rotation matrices, checkpoint_dtype) was taken from the parameters outside
    # the FP4 layers only: with none there, float32. The float32 matrices then outweighed the bfloat16
    # biases, and a model built in checkpoint_dtype's float32 did not load (bias: expected float32).
    from fpquant_ext.io import checkpoint_dtype

    def build(seed, dtype=torch.bfloat16):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 128)).to(dtype)
    config = fq.FP4Config(format="nvfp4", rotation="hadamard", rotation_size=128)
    model = build(0)
    fq.quantize_model(model, config, progress=False)
    save_quantized(model, str(tmp_path), "fp-quant", config)
    _, tensors = read(str(tmp_path))
    assert tensors["0.forward_hadamard_matrix"].dtype == torch.bfloat16
    assert checkpoint_dtype(str(tmp_path)) == torch.bfloat16
    fresh = load_quantized(build(1, checkpoint_dtype(str(tmp_path))), str(tmp_path))
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("format", ["nvfp4", "mxfp4"])
def test_checkpoint_dtype_without_float_tensors_outside_the_fp4_layers(tmp_path, format):
    # A compressed-tensors checkpoint of a model whose every Linear is converted, without biases, holds no
    # tensor in the model dtype: its NVFP4 global scales (float32 whatever the model) made checkpoint_dtype
    # float32, and an MXFP4 one gave None. What config.json records is the model's dtype then.
    from fpquant_ext.io import checkpoint_dtype

    def build(seed, dtype=torch.bfloat16, bias=False):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(64, 64, bias=bias), torch.nn.Linear(64, 64, bias=bias)).to(dtype)
    config = fq.FP4Config(format=format, modules_to_not_convert=[])
    for dtype, bias, model_config, expected in [
            (torch.bfloat16, False, {"torch_dtype": "bfloat16"}, torch.bfloat16),
            (torch.float16, False, {"dtype": "float16"}, torch.float16),
            (torch.bfloat16, False, {}, None),
            (torch.float16, True, {"torch_dtype": "float32"}, torch.float16)]:  # the biases' dtype comes first
        model = build(0, dtype, bias)
        fq.quantize_model(model, config, progress=False)
        out = tmp_path / f"{dtype}-{bias}-{len(model_config)}"
        save_quantized(model, str(out), "compressed-tensors", config, model_config=model_config)
        assert checkpoint_dtype(str(out)) == expected, (dtype, bias, model_config)


@pytest.mark.parametrize("export", ["fp-quant", "compressed-tensors"])
def test_a_block_under_two_names_is_saved_once(tmp_path, export):
    # A shared module holding FP4 layers, and a shared unconverted Linear: each tensor once, under its first
    # name, and the unconverted Linear listed under its first name only.
    def shared(model):
        model.blocks.append(model.blocks[0])
        model.head2 = model.lm_head
        return model
    config = fq.FP4Config(format="nvfp4")
    model = shared(converted(config))
    save_quantized(model, str(tmp_path), export, config)
    cfg, tensors = read(str(tmp_path))
    assert not any(k.startswith(("blocks.2.", "head2.")) for k in tensors)
    assert "blocks.0.up.weight_global_scale" in tensors and "lm_head.weight" in tensors
    qc = cfg["quantization_config"]
    assert qc["modules_to_not_convert" if export == "fp-quant" else "ignore"] == ["lm_head"]
    fresh = load_quantized(shared(make_model(seed=3)), str(tmp_path))
    assert fresh.blocks[2] is fresh.blocks[0] and fresh.head2 is fresh.lm_head
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), model(x))
