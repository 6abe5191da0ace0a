"""A checkpoint that disagrees with the model or with its own config raises an error naming the tensor."""

import re

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext.io import CheckpointError, load_quantized, save_quantized

from io_helpers import converted, make_model, read, write

pytest.importorskip("safetensors")


@pytest.fixture(scope="module", params=["fp-quant", "compressed-tensors"])
def saved(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    config = fq.FP4Config(format="nvfp4")
    save_quantized(converted(config), str(path), request.param, config)
    return request.param, read(str(path))


def _load(tmp_path, cfg, tensors):
    write(str(tmp_path), cfg, tensors)
    return load_quantized(make_model(seed=5), str(tmp_path))


def _names(export):
    return ("qweight", "scales") if export == "fp-quant" else ("weight_packed", "weight_scale")


def test_missing_tensor(tmp_path, saved):
    export, (cfg, tensors) = saved
    for key in [f"blocks.1.up.{_names(export)[1]}", "blocks.0.up.weight_global_scale", "blocks.0.up.bias",
                "embed.weight", "lm_head.weight"]:
        t = dict(tensors)
        del t[key]
        with pytest.raises(CheckpointError, match=f"missing tensor {key}"):
            _load(tmp_path, cfg, t)


def test_extra_tensor(tmp_path, saved):
    _, (cfg, tensors) = saved
    t = dict(tensors, **{"blocks.0.extra": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected tensor.*blocks.0.extra"):
        _load(tmp_path, cfg, t)
    t = dict(tensors, **{"blocks.0.down.bias": torch.zeros(64, dtype=torch.bfloat16)})  # the layer has none
    with pytest.raises(CheckpointError, match="blocks.0.down.bias"):
        _load(tmp_path, cfg, t)


def test_misshaped_tensor(tmp_path, saved):
    export, (cfg, tensors) = saved
    codes, scales = (f"blocks.0.down.{n}" for n in _names(export))
    for key, bad in [(codes, tensors[codes][:, :-1]), (scales, tensors[scales][:-1]),
                     ("blocks.1.up.weight_global_scale", torch.ones(2)), ("norm.weight", torch.ones(63, dtype=torch.bfloat16))]:
        with pytest.raises(CheckpointError, match=f"tensor {key}: expected shape"):
            _load(tmp_path, cfg, dict(tensors, **{key: bad}))


def test_wrong_dtype(tmp_path, saved):
    export, (cfg, tensors) = saved
    codes, scales = (f"blocks.0.up.{n}" for n in _names(export))
    bad_scales = tensors[scales].view(torch.uint8) if export == "compressed-tensors" else \
        tensors[scales].view(torch.int8)
    for key, bad in [(codes, tensors[codes].view(torch.int8)), (scales, bad_scales),
                     ("embed.weight", tensors["embed.weight"].float()),
                     ("blocks.0.up.bias", tensors["blocks.0.up.bias"].half())]:
        with pytest.raises(CheckpointError, match=f"tensor {key}: expected dtype"):
            _load(tmp_path, cfg, dict(tensors, **{key: bad}))


def test_config_disagrees_with_tensors(tmp_path, saved):
    export, (cfg, tensors) = saved
    qc = cfg["quantization_config"]
    if export == "fp-quant":
        wrong = [dict(qc, forward_dtype="mxfp4", hadamard_group_size=32, fpquant_ext=None),  # scales: [N, K/16]
                 dict(qc, hadamard_group_size=32),                          # matrices are 16 x 16
                 dict(qc, modules_to_not_convert=["lm_head", "up"])]        # up layers are quantized
        errors = ["blocks.0.up.scales", "blocks.0.up.forward_hadamard_matrix", "blocks.0.up.qweight"]
    else:
        g = qc["config_groups"]["group_0"]
        mx = dict(g, weights=dict(g["weights"], group_size=32, strategy="group", scale_dtype="torch.uint8"),
                  format="mxfp4-pack-quantized")
        wrong = [dict(qc, config_groups={"group_0": mx}, format="mxfp4-pack-quantized", fpquant_ext=None),
                 dict(qc, ignore=["lm_head", "blocks.1.up"]),
                 dict(qc, config_groups={"group_0": dict(g, format="mxfp4-pack-quantized")})]
        errors = ["blocks.0.up.weight_scale: expected dtype", "blocks.1.up.weight_packed", "format"]
    for q, err in zip(wrong, errors):
        with pytest.raises(CheckpointError, match=err):
            _load(tmp_path, dict(cfg, quantization_config=q), tensors)


def test_nothing_loads_silently_wrong(tmp_path, saved):
    """A global scale that is zero, a non-orthogonal rotation: refused, not loaded."""
    export, (cfg, tensors) = saved
    with pytest.raises(CheckpointError, match="blocks.0.up.weight_global_scale: a global scale must be finite"):
        _load(tmp_path, cfg, dict(tensors, **{"blocks.0.up.weight_global_scale": torch.zeros(1)}))
    if export == "fp-quant":
        key = "blocks.0.up.forward_hadamard_matrix"
        with pytest.raises(CheckpointError, match=f"{key}: not orthogonal"):
            _load(tmp_path, cfg, dict(tensors, **{key: 2 * tensors[key]}))
    with pytest.raises(CheckpointError, match="quant_method 'gptq'"):
        _load(tmp_path, dict(cfg, quantization_config={"quant_method": "gptq"}), tensors)


def test_missing_directory_is_named(tmp_path):
    from fpquant_ext.io import inspect_checkpoint
    for call in (lambda p: load_quantized(make_model(), p), inspect_checkpoint):
        with pytest.raises(CheckpointError, match="nosuch: no such directory"):
            call(str(tmp_path / "nosuch"))
        (tmp_path / "file").write_text("x")
        with pytest.raises(CheckpointError, match="file is not a checkpoint directory"):
            call(str(tmp_path / "file"))


def test_truncated_or_corrupt_file_is_named(tmp_path, saved):
    from fpquant_ext.io import inspect_checkpoint
    export, (cfg, tensors) = saved
    write(str(tmp_path), cfg, tensors)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    for cut, match in [(len(data) // 2, "lies outside the file's"), (4, "not a safetensors file, or truncated"),
                       (100, "truncated")]:
        path.write_bytes(data[:cut])
        for call in (lambda: load_quantized(make_model(seed=5), str(tmp_path)),
                     lambda: inspect_checkpoint(str(tmp_path))):
            with pytest.raises(CheckpointError, match=f"model.safetensors: .*{match}"):
                call()


@pytest.mark.parametrize("text,match", [
    ("{not json", "config.json: not valid JSON"),
    ("[1, 2]", "config.json: not a JSON object"),
    ('{"quantization_config": "fp_quant"}', "config.json: quantization_config is not a JSON object")])
def test_bad_config_json_is_named(tmp_path, saved, text, match):
    from fpquant_ext.io import inspect_checkpoint
    _, (cfg, tensors) = saved
    write(str(tmp_path), cfg, tensors)
    (tmp_path / "config.json").write_text(text)
    for call in (lambda: load_quantized(make_model(seed=5), str(tmp_path)), lambda: inspect_checkpoint(str(tmp_path))):
        with pytest.raises(CheckpointError, match=match):
            call()


@pytest.mark.parametrize("index,match", [
    ("{not json", "model.safetensors.index.json: not valid JSON"),
    ("{}", "model.safetensors.index.json: no weight_map"),
    ('{"weight_map": {"embed.weight": "model-00001-of-00002.safetensors"}}',
     "model.safetensors.index.json names model-00001-of-00002.safetensors, which is not in")])
def test_bad_shard_index_is_named(tmp_path, saved, index, match):
    from fpquant_ext.io import checkpoint_dtype, inspect_checkpoint
    _, (cfg, tensors) = saved
    write(str(tmp_path), cfg, tensors)
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(index)
    for call in (lambda: load_quantized(make_model(seed=5), str(tmp_path)), lambda: inspect_checkpoint(str(tmp_path)),
                 lambda: checkpoint_dtype(str(tmp_path))):
        with pytest.raises(CheckpointError, match=match):
            call()


def test_an_already_converted_model_is_refused_by_name(tmp_path, saved):
    # It used to fail with "unexpected tensor(s) ... no such parameter", as if the checkpoint were wrong.
    _, (cfg, tensors) = saved
    write(str(tmp_path), cfg, tensors)
    with pytest.raises(ValueError, match="load_quantized: the model already has FP4Linear layers"):
        load_quantized(converted(fq.FP4Config(format="nvfp4")), str(tmp_path))


def test_a_model_under_other_names_is_named_as_such(tmp_path, saved):
    # The layers under another prefix (a base model against a ...ForCausalLM checkpoint): none of the model's
    # Linear layers is quantized in the file. It used to fail on the first plain tensor ("missing tensor
    # embed.weight"), as if that one tensor were missing from the checkpoint.
    _, (cfg, tensors) = saved
    write(str(tmp_path), cfg, {f"model.{k}": v for k, v in tensors.items()})
    with pytest.raises(CheckpointError, match=r"none of the model's Linear layers is quantized in the checkpoint "
                                              r"\(it quantizes model.blocks.0.down, model.blocks.0.up, \.\.\.; the "
                                              r"model has blocks.0.up, blocks.0.down, \.\.\.\)"):
        load_quantized(make_model(seed=5), str(tmp_path))


def _config_edits(export, qc):
    """Hand edits of quantization_config with a field of the wrong type, value or absent: (edited config,
    the field the error must name)."""
    meta = qc["fpquant_ext"]
    common = [(dict(qc, fpquant_ext=[1]), "fpquant_ext"),
              (dict(qc, fpquant_ext=dict(meta, rotation_size="16")), "fpquant_ext.rotation_size"),
              (dict(qc, fpquant_ext=dict(meta, modules_to_not_convert=[1])), "fpquant_ext.modules_to_not_convert"),
              (dict(qc, fpquant_ext=dict(meta, include=3)), "fpquant_ext.include"),
              (dict(qc, fpquant_ext=dict(meta, gptq_damp="0.01")), "fpquant_ext.gptq_damp"),
              (dict(qc, fpquant_ext=dict(meta, format="fp8")), "fpquant_ext.format"),
              (dict(qc, quant_method=["fp_quant"]), "quant_method")]
    if export == "fp-quant":
        return common + [
            (dict(qc, hadamard_group_size="16"), "hadamard_group_size"),
            (dict(qc, hadamard_group_size=16.0), "hadamard_group_size"),
            (dict(qc, forward_dtype=["nvfp4"]), "forward_dtype"),
            (dict(qc, forward_dtype={"nvfp4": 1}), "forward_dtype"),
            (dict(qc, forward_dtype="fp8"), "forward_dtype"),
            ({k: v for k, v in qc.items() if k != "hadamard_group_size"}, "hadamard_group_size"),
            (dict(qc, modules_to_not_convert="lm_head"), "modules_to_not_convert"),
            (dict(qc, modules_to_not_convert=3), "modules_to_not_convert"),
            (dict(qc, modules_to_not_convert={"lm_head": True}), "modules_to_not_convert"),
            (dict(qc, modules_to_not_convert=[1]), "modules_to_not_convert"),
            (dict(qc, store_master_weights="false"), "store_master_weights"),
            (dict(qc, pseudoquantization=0), "pseudoquantization")]
    g = qc["config_groups"]["group_0"]
    return common + [
        (dict(qc, config_groups={"group_0": dict(g, weights=dict(g["weights"], group_size="16"))}),
         "config_groups.group_0.weights"),
        (dict(qc, config_groups=[g]), "config_groups"),
        (dict(qc, config_groups="group_0"), "config_groups"),
        (dict(qc, config_groups={"group_0": [g]}), "config_groups.group_0"),
        (dict(qc, config_groups={"group_0": dict(g, weights=[g["weights"]])}), "config_groups.group_0.weights"),
        (dict(qc, config_groups={"group_0": dict(g, input_activations=[1])}), "config_groups.group_0.input_activations"),
        ({k: v for k, v in qc.items() if k != "config_groups"}, "config_groups"),
        (dict(qc, ignore="lm_head"), "ignore"),
        (dict(qc, ignore=3), "ignore"),
        (dict(qc, ignore=[1]), "ignore")]


def test_a_mistyped_config_field_is_named_with_the_file(tmp_path, saved):
    # Hand-edited configs used to fail with a TypeError / AttributeError from deep inside, or load (a string
    # for a list of names is iterated as its characters).
    export, (cfg, tensors) = saved
    for i, (qc, field) in enumerate(_config_edits(export, cfg["quantization_config"])):
        path = tmp_path / str(i)
        with pytest.raises(CheckpointError) as e:
            _load(path, dict(cfg, quantization_config=qc), tensors)
        msg = str(e.value)
        assert msg.startswith(f"{path / 'config.json'}: quantization_config"), msg
        assert re.search(rf"\b{re.escape(field)}([ :']|$)", msg), (field, msg)


def test_inspect_shows_a_mistyped_config(tmp_path, saved):
    from fpquant_ext.io import inspect_checkpoint
    export, (cfg, tensors) = saved
    for i, (qc, field) in enumerate(_config_edits(export, cfg["quantization_config"])):
        path = tmp_path / str(i)
        write(str(path), dict(cfg, quantization_config=qc), tensors)
        try:
            inspect_checkpoint(str(path))
        except CheckpointError as e:  # only the format it cannot tell
            assert str(e).startswith(f"{path / 'config.json'}: quantization_config: quant_method"), str(e)


def test_one_name_as_a_string_in_the_recorded_config_loads(tmp_path, saved):
    # FP4Config takes one string as one name in modules_to_not_convert / include / exclude, and versions
    # before it normalized them recorded such a string as given: those checkpoints loaded, and must still.
    export, (cfg, tensors) = saved
    qc = cfg["quantization_config"]
    for i, (key, value) in enumerate([("modules_to_not_convert", "lm_head"), ("include", "*"),
                                      ("exclude", "no_such_layer")]):
        edited = dict(qc, fpquant_ext=dict(qc["fpquant_ext"], **{key: value}))
        model = _load(tmp_path / str(i), dict(cfg, quantization_config=edited), tensors)
        assert isinstance(model.blocks[0].up, fq.FP4Linear)
