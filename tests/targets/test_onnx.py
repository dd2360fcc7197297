"""The ONNX target on tiny configs: the stored weights against ONNX Runtime's own decoding, logits
against the eager references through prefill chunks and the KV cache, onnxruntime-genai loading
the bundle, and the failure paths. SmolLM2 and R1-140M runs are in the `extra` suite."""

import dataclasses
import json
import shutil

import numpy as np
import onnxruntime_genai as og  # the `test` extra installs it (pyproject.toml)
import pytest
import torch

from mobilellm_export.bundle import sha256
from mobilellm_export.presets import PRESETS
from mobilellm_export.checkpoints import build_model
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import load_recipe
from mobilellm_export.runtimes.eager import EagerRunner
from mobilellm_export.checkpoints import load
from mobilellm_export.backends import ExportSpec
from mobilellm_export.backends.onnxruntime.target import Onnx
from mobilellm_export.quant.simulate import DequantLinear
from mobilellm_export.runtimes.onnxruntime import OnnxRunner
from conftest import LLAMA3_TOKENIZER, calib
from test_sources import assert_one_line_error, run_cli


CTX, SEQ = 256, 16


def _export(tmp_path, quant="4bit", accuracy="fp32", preset="tiny-r1"):
    ck = load(preset, tokenizer=str(LLAMA3_TOKENIZER))
    model = build_model(ck, CTX)
    quantize(model, load_recipe(quant), calib(model))
    target = Onnx(accuracy)
    ref = target.reference(model)
    spec = ExportSpec(config=model.cfg, max_context=CTX, max_seq_len=SEQ, eos_ids=(1,), bos_id=0)
    target.export(target.prepare(ref, spec), spec, tmp_path)
    return model, ref, tmp_path


@pytest.fixture(scope="module")
def int4(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("onnx4"))


def _runner(d, cfg):
    return OnnxRunner(d / "model.onnx", threads=2, max_seq_len=SEQ, max_context=CTX, cfg=dataclasses.asdict(cfg))


def test_matmulnbits_weights_decode_to_the_references_exactly(int4, tmp_path):
    """Each MatMulNBits node, run alone by ONNX Runtime on the identity matrix, returns W^T: the
    weights as the runtime itself decodes them. They equal the reference's integers x scales."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model, ref, d = int4
    proto = onnx.load(str(d / "model.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    linears = dict(ref.named_modules())
    checked = 0
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n = attrs["K"], attrs["N"]
        attrs["accuracy_level"] = 1
        single = helper.make_graph(
            [helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft", **attrs)], "one",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [k, k])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [k, n])],
            [inits[i] for i in node.input[1:]])
        m1 = helper.make_model(single, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
        m1.ir_version = 10
        w_t = ort.InferenceSession(m1.SerializeToString()).run(None, {"x": np.eye(k, dtype=np.float32)})[0]
        if node.name == "lm_head":
            parts = ["lm_head"]
        elif node.name.endswith("qkv_proj"):
            p = node.name.replace(".attn.qkv_proj", ".self_attn")
            parts = [f"{p}.q_proj", f"{p}.k_proj", f"{p}.v_proj"]
        elif node.name.endswith("gate_up_proj"):
            p = node.name.replace(".gate_up_proj", "")
            parts = [f"{p}.gate_proj", f"{p}.up_proj"]
        else:
            parts = [node.name.replace(".attn.", ".self_attn.")]
        expected = []
        for name in parts:
            mod = linears[name]
            assert isinstance(mod, DequantLinear), name
            w = mod.source[0].weight  # the torchao tensor: int8 integers and scales
            q, s = w.qdata.float(), w.scale.float().reshape(w.qdata.shape[0], -1)
            expected.append((q.reshape(q.shape[0], s.shape[1], -1) * s[..., None]).reshape(q.shape))
        assert np.array_equal(w_t.T, torch.cat(expected).numpy()), node.name
        checked += 1
    # tiny-r1: 2 blocks x (qkv, o, gate|up, down) + the 8-bit head
    assert checked == 2 * 4 + 1


def test_qk_norm_before_gqa_rope_computes_the_reference_norm_after_rope(tmp_path):
    """graph.py normalises q/k (one BranchwiseRMSNorm over the packed q|k heads) *before*
    GroupQueryAttention applies RoPE; the reference normalises after RoPE. The built graph is
    checked for that order, then run by ONNX Runtime with its intermediate values as outputs: the
    keys GQA writes into the cache (RoPE'd inside the op) and its attention output equal the
    reference's norm(rope(.)) computed from the same block input, to fp32 rounding."""
    import onnx
    from onnx import helper

    from mobilellm_export.backends.onnxruntime.graph import export_onnx
    from mobilellm_export.model import Transformer, random_weights, to_rotate_half

    cfg = dataclasses.replace(PRESETS["tiny-r1"], vocab_size=512)  # R1: QK-norm on every RoPE layer
    assert cfg.qk_norm and all(cfg.uses_rope(i) for i in range(cfg.n_layers))
    cfg, sd = to_rotate_half(cfg, random_weights(cfg, seed=3))  # as build_model gives every target
    model = Transformer.from_weights(cfg, sd, max_context=CTX).eval()
    spec = ExportSpec(config=cfg, max_context=CTX, max_seq_len=SEQ, eos_ids=(2,), bos_id=1)
    export_onnx(model, spec, tmp_path, "fp32")
    proto = onnx.load(str(tmp_path / "model.onnx"))

    # order: input norm -> q|k|v -> Split -> BranchwiseRMSNorm(q|k heads) -> Pack -> GQA(do_rotary)
    nodes = {n.name: n for n in proto.graph.node}
    producer = {o: n for n in proto.graph.node for o in n.output}
    H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    for i in range(cfg.n_layers):
        gqa = nodes[f"layers.{i}.attn/GroupQueryAttention"]
        attrs = {a.name: helper.get_attribute_value(a) for a in gqa.attribute}
        assert attrs["do_rotary"] == 1 and attrs["rotary_interleaved"] == 0, attrs
        pack = producer[gqa.input[0]]
        norm = producer[pack.input[0]]
        assert pack.op_type == "Concat" and norm.op_type == "BranchwiseRMSNorm", (pack.op_type, norm.op_type)
        nattrs = {a.name: helper.get_attribute_value(a) for a in norm.attribute}
        assert nattrs["num_branches"] == H + KV and len(norm.input) == 1  # per head, weightless
        split = producer[norm.input[0]]
        assert split.op_type == "Split" and producer[split.input[0]].name == f"layers.{i}.attn.qkv_proj"
        assert producer[pack.input[1]] is split  # v is not normed

    # numbers: block 0's input, GQA's output and the keys it cached, from ONNX Runtime
    x_name, attn_name = "layers.0/input_norm/out0", "layers.0.attn/GroupQueryAttention/out0"
    f32 = onnx.TensorProto.FLOAT
    proto.graph.output.extend([helper.make_tensor_value_info(x_name, f32, None),
                               helper.make_tensor_value_info(attn_name, f32, None)])
    probe = tmp_path / "probe"
    probe.mkdir()
    onnx.save_model(proto, str(probe / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    runner = OnnxRunner(probe / "model.onnx", threads=2, max_seq_len=SEQ, max_context=CTX, cfg=dataclasses.asdict(cfg))
    toks = torch.randint(0, cfg.vocab_size, (SEQ,), generator=torch.Generator().manual_seed(5)).tolist()
    _, x, attn_out = runner._run(toks, 0, ("logits", x_name, attn_name))
    cached_k = torch.from_numpy(runner.caches["past_key_values.0.key"].numpy()[0, :, :SEQ])  # [KV, S, D]

    with torch.no_grad():
        blk, S = model.layers[0].self_attn, SEQ
        x = torch.from_numpy(x).reshape(1, S, -1)
        cos, sin = model.rope.tables(torch.arange(S))
        q = blk.qk_norm(model.rope(blk.q_proj(x).view(1, S, H, D), cos, sin))  # the reference's order
        k = blk.qk_norm(model.rope(blk.k_proj(x).view(1, S, KV, D), cos, sin))
        v = blk.v_proj(x).view(1, S, KV, D)
        want = model.caches[0].attend(q, k, v, torch.tensor([0]))  # [1, S, H * D], before o_proj

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    assert rel(cached_k, k[0].transpose(0, 1)) <= 1e-5
    assert rel(torch.from_numpy(attn_out).reshape(want.shape), want) <= 1e-5


@pytest.mark.parametrize("quant", ["4bit", "fp32"])
def test_logits_match_the_reference_through_chunked_prefill_and_decode(tmp_path, quant):
    """Level 1 (fp32 activations): a 37-token prompt in chunks of 16 through the shared-buffer KV
    cache, then 32 decode steps, within 1e-3 x max |logit| of the reference at every step."""
    model, ref, _ = _export(tmp_path, quant)
    toks = torch.randint(0, model.cfg.vocab_size, (69,), generator=torch.Generator().manual_seed(1)).tolist()
    ours, eager = _runner(tmp_path, model.cfg), EagerRunner(ref)
    worst, scale = 0.0, 0.0
    pairs = [(ours.prefill(toks[:37]), eager.prefill(toks[:37]))]
    pairs += [(ours.decode(t), eager.decode(t)) for t in toks[37:]]
    for a, b in pairs:
        worst, scale = max(worst, (a - b).abs().max().item()), max(scale, b.abs().max().item())
    assert worst <= 1e-3 * scale, (worst, scale)
    full, want = ours.score(toks), eager.score(toks)  # all positions at once (the parity path)
    assert ((full - want).abs().max() / want.abs().max()).item() <= 1e-3


def test_layer_shared_blocks_apply_twice_with_their_own_caches(tmp_path):
    """MobileLLM v1 layer sharing: each block's weights serve two applications, each with its own
    KV cache (genai sees 2 x n_layers caches); nodes are per application, weights per block."""
    from mobilellm_export.model import Transformer, random_weights

    cfg = dataclasses.replace(PRESETS["tiny-llama"], layer_sharing=True)
    model = Transformer.from_weights(cfg, random_weights(cfg), max_context=CTX)
    target = Onnx("fp32")
    spec = ExportSpec(config=cfg, max_context=CTX, max_seq_len=SEQ, eos_ids=(2,), bos_id=1)
    target.export(target.prepare(model, spec), spec, tmp_path)
    assert json.loads((tmp_path / "genai_config.json").read_text())["model"]["decoder"]["num_hidden_layers"] == 4
    toks = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(4)).tolist()
    a, b = _runner(tmp_path, cfg).score(toks), EagerRunner(model).score(toks)
    assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-4
    size = (tmp_path / "model.onnx.data").stat().st_size
    assert size < cfg.param_count() * 4 * 1.2  # shared weights stored once (plus RoPE tables)


def test_int8_accuracy_level_is_close_but_not_exact(tmp_path):
    """Level 4 quantizes activations per block: a measurable, bounded gap from the weight-only
    reference (a level that silently fell back to fp32 would show 0)."""
    model, ref, _ = _export(tmp_path, "4bit", "int8")
    toks = torch.randint(0, model.cfg.vocab_size, (48,), generator=torch.Generator().manual_seed(2)).tolist()
    a, b = _runner(tmp_path, model.cfg).score(toks), EagerRunner(ref).score(toks)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    assert 1e-4 < rel < 0.1, rel
    kl = (b.log_softmax(-1).exp() * (b.log_softmax(-1) - a.log_softmax(-1))).sum(-1).mean().item()
    assert kl < 0.03, kl


def test_onnxruntime_genai_greedy_equals_our_runner(int4):
    """onnxruntime-genai loads the bundle folder's genai_config.json and model, and its greedy
    tokens equal argmax over our runner's logits."""
    model, _, d = int4
    gen = og.Generator(og.Model(og.Config(str(d))), _params(d, 8 + 16))
    prompt = torch.randint(0, model.cfg.vocab_size, (8,), generator=torch.Generator().manual_seed(3)).tolist()
    gen.append_tokens(np.asarray(prompt, np.int32))
    theirs = []
    for _ in range(16):
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    ours = _runner(d, model.cfg)
    tok, mine = int(ours.prefill(prompt).argmax()), []
    for _ in range(16):
        mine.append(tok)
        tok = int(ours.decode(tok).argmax())
    assert theirs == mine


def _params(d, length):
    m = og.Model(og.Config(str(d)))
    p = og.GeneratorParams(m)
    p.set_search_options(max_length=length, do_sample=False, min_length=length)
    return p


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = run_cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--target", "onnx", "--quant", "fp32",
                "--out", str(out), "--max-context", "128", "--max-seq-len", "16", "--eval-tokens", "96",
                "--onnx-ort", "on", "--no-latency", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    return out / "tiny-r1-onnx-fp32", json.loads(r.stdout)


def test_fp32_bundle_reproduces_the_float_model(fp32_bundle):
    d, rep = fp32_bundle
    names = {p.name for p in d.iterdir()}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "bundle.json"} <= names
    m = json.loads((d / "bundle.json").read_text())
    assert m["target"]["options"] == {"accuracy": "int8", "ort": "on"} and m["target"]["data_file"] == "model.onnx.data"
    assert rep["passed"], [c for c in rep["gate"]["checks"] if c["status"] == "fail"]
    assert rep["parity"]["float_vs_artifact"]["max_abs_logit"] <= 1e-3
    # the tied table is stored once: weights file below the fp32 parameters plus a second table
    cfg = PRESETS["tiny-r1"]
    assert (d / "model.onnx.data").stat().st_size < (cfg.param_count() + cfg.vocab_size * cfg.dim // 2) * 4
    g = json.loads((d / "genai_config.json").read_text())
    assert g["model"]["decoder"]["num_hidden_layers"] == cfg.n_layers and g["search"]["past_present_share_buffer"]


def test_ort_format_model_computes_what_the_onnx_model_does(fp32_bundle):
    import onnxruntime as ort

    d, _ = fp32_bundle
    cfg = PRESETS["tiny-r1"]
    feed = {"input_ids": np.array([[5, 6, 7, 8]], np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    for i in range(cfg.n_layers):
        for part in ("key", "value"):
            feed[f"past_key_values.{i}.{part}"] = np.zeros((1, cfg.n_kv_heads, 0, cfg.head_dim), np.float32)
    a, b = (ort.InferenceSession(str(d / f)).run(["logits"], feed)[0] for f in ("model.onnx", "model.ort"))
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    ops = (d / "model.required_operators.config").read_text()
    assert "com.microsoft;1;" in ops and "GroupQueryAttention" in ops and "MatMulNBits" not in ops  # fp32: MatMul


def test_a_truncated_data_file_is_one_line_from_verify(fp32_bundle, tmp_path):
    """Corruption sha256 cannot see: the manifest hashes the truncated file, so only ORT's load fails."""
    src, _ = fp32_bundle
    d = tmp_path / src.name
    shutil.copytree(src, d)
    data = d / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    m = json.loads((d / "bundle.json").read_text())
    m["files"]["model.onnx.data"] = {"sha256": sha256(data), "bytes": data.stat().st_size}
    (d / "bundle.json").write_text(json.dumps(m))
    assert_one_line_error(run_cli("verify", str(d), "--no-latency", "--quiet"), "ONNX Runtime cannot load model.onnx")


def test_onnx_option_on_another_target_is_one_line(tmp_path):
    r = run_cli("--model", "tiny-r1", "--onnx-accuracy", "fp32", "--out", str(tmp_path))
    assert_one_line_error(r, "--onnx-accuracy applies to --target onnx, not android")
    assert not any(tmp_path.iterdir())


def test_a_head_dim_onnx_runtime_cannot_run_is_refused_before_export(tmp_path):
    """ORT's GroupQueryAttention needs head_dim % 16 == 0, and says so only when a token runs: a
    head_dim-8 model (the tiny GGUF of tests/unit/test_gguf_source.py) exported, then crashed in
    verify with a traceback. The target refuses it in one line, before any work; the same model
    exports for Android."""
    from test_gguf_source import write_gguf

    write_gguf(tmp_path / "hd8.gguf", hidden=64)
    r = run_cli("--model", str(tmp_path / "hd8.gguf"), "--target", "onnx", "--quant", "fp32", "--no-verify",
                "--quiet", "--out", str(tmp_path / "out"))
    assert_one_line_error(r, "head_dim 8; ONNX Runtime's GroupQueryAttention needs a multiple of 16")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())



@pytest.mark.extra
@pytest.mark.parametrize("model", ["smollm2-135m", "r1-140m"])
def test_onnxruntime_genai_greedy_on_real_shapes(model, tmp_path):
    """onnxruntime-genai loads the SmolLM2 and R1-140M bundles (QK-norm, 128K tied vocabulary) and
    its 16 greedy tokens equal our runner's, at --onnx-accuracy fp32."""
    tok = [] if model == "smollm2-135m" else ["--tokenizer", str(LLAMA3_TOKENIZER)]
    r = run_cli("--model", model, *tok, "--target", "onnx", "--onnx-accuracy", "fp32", "--out", str(tmp_path),
                "--no-verify", "--quiet", timeout=1800)
    assert r.returncode == 0, r.stderr
    d = tmp_path / f"{model}-onnx-4bit"
    m = json.loads((d / "bundle.json").read_text())
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(d / "tokenizer.json")).encode("The cat sat on the mat because",
                                                               add_special_tokens=False).ids
    gen = og.Generator(og.Model(og.Config(str(d))), _params(d, len(ids) + 16))
    gen.append_tokens(np.asarray(ids, np.int32))
    theirs = []
    for _ in range(16):
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    ours = OnnxRunner(d / "model.onnx", threads=2, max_seq_len=128, max_context=2048, cfg=m["config"])
    tok_, mine = int(ours.prefill(ids).argmax()), []
    for _ in range(16):
        mine.append(tok_)
        tok_ = int(ours.decode(tok_).argmax())
    assert theirs == mine


@pytest.mark.extra
@pytest.mark.parametrize("accuracy", ["fp32", "int8"])
def test_smollm2_4bit_lowering_on_botchan(accuracy, tmp_path):
    """The acceptance run: SmolLM2 4bit, first 4,096 novel Botchan tokens, against the weight-only
    reference. Level 1: KL <= 1e-4 and max |dlogit| <= 1e-3 x max |logit|; level 4: KL <= 0.03, top-1 >= 0.85."""
    from conftest import BOTCHAN

    r = run_cli("--model", "smollm2-135m", "--target", "onnx", "--onnx-accuracy", accuracy, "--eval-text", str(BOTCHAN),
                "--no-latency", "--out", str(tmp_path), "--json", "--quiet", timeout=3600)
    assert r.returncode == 0, r.stderr
    low = json.loads(r.stdout)["parity"]["quant_vs_artifact"]
    if accuracy == "fp32":
        assert low["kl_mean"] <= 1e-4 and low["max_abs_logit_rel"] <= 1e-3, low
    else:
        assert low["kl_mean"] <= 0.03 and low["top1"] >= 0.85, low


def test_odd_widths_and_mixed_formats(tmp_path):
    """dim 48 (no 32-wide groups: per-channel 4-bit, K padded to whole blocks of 32, the padded
    embedding sliced back) and a plan with an 8-bit k_proj among 4-bit q/v (packed after three
    MatMuls): still the reference's logits at level 1."""
    import textwrap

    from mobilellm_export.model import Transformer, random_weights

    cfg = dataclasses.replace(PRESETS["tiny-llama"], dim=48, n_heads=3, n_kv_heads=1, hidden_dim=96)
    model = Transformer.from_weights(cfg, random_weights(cfg), max_context=CTX)
    recipe = tmp_path / "mixed.toml"
    recipe.write_text(textwrap.dedent("""
        name = "mixed"
        [linear]
        bits = 4
        group_size = 32
        activations = "int8_dynamic"
        [embedding]
        bits = 8
        group_size = 0
        [head]
        bits = 8
        group_size = 0
        activations = "int8_dynamic"
        scale_dtype = "fp32"
        [[override]]
        match = "layers.0.self_attn.k_proj"
        bits = 8
        group_size = 0
        scale_dtype = "fp32"
    """))
    quantize(model, load_recipe(str(recipe)))
    target = Onnx("fp32")
    ref = target.reference(model)
    spec = ExportSpec(config=cfg, max_context=CTX, max_seq_len=SEQ, eos_ids=(2,), bos_id=1)
    target.export(target.prepare(ref, spec), spec, tmp_path)
    toks = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    a, b = _runner(tmp_path, cfg).score(toks), EagerRunner(ref).score(toks)
    assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-4


def test_target_options_are_checked():
    """Options rebuild the target as it was built (bundle.json target.options); one an older
    version lacks, or a value out of range, is a one-line UserError, not a TypeError."""
    from mobilellm_export import backends
    from mobilellm_export.errors import UserError

    assert backends.of_bundle({"target": {"name": "onnx", "options": {"accuracy": "fp32"}}}).accuracy == "fp32"
    assert backends.of_bundle({"target": {"name": "android"}}).options == {"weights": "ptd"}  # the default
    with pytest.raises(UserError, match="target onnx takes no option 'precision'"):
        backends.get("onnx", {"precision": "fp16"})
    with pytest.raises(UserError, match="--onnx-accuracy 'int4': choose one of int8, fp32"):
        backends.get("onnx", {"accuracy": "int4"})
    with pytest.raises(UserError, match="target android takes no option 'accuracy'"):
        backends.get("android", {"accuracy": "fp32"})
