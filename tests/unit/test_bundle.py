"""bundle.json: the JSON Schema contract, and the BOS policy it records.

The schema file inside the package is the one owner of the format; these tests pin what it
accepts and refuses. The BOS policy is checked against both tokenizers that run a bundle: Python
`tokenizers` (verification) and ExecuTorch's C++ tokenizer (`pytorch_tokenizers`, inside
`TextLLMRunner`), which disagree on when BOS is added.
"""

import copy
from pathlib import Path

import pytest

from conftest import SHARED
from mobilellm_export.bundle import READABLE, SCHEMA_VERSION, schema, validate
from mobilellm_export.errors import UserError
from mobilellm_export.text.tokenizer import Tokenizer

DATA = SHARED / "data"
SHA = "0" * 64


def manifest() -> dict:
    return {
        "schema_version": SCHEMA_VERSION, "model": "tiny-r1", "source": {"kind": "preset", "id": "tiny-r1"},
        "target": {"name": "android", "runtime": "ExecuTorch (XNNPACK)", "entry": "model.pte", "data_file": None},
        "recipe": {"name": "fp32", "linear": {}, "embedding": {}, "head": {}, "thresholds": {}},
        "config": {"arch": "llama", "vocab_size": 512, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                   "head_dim": 16, "hidden_dim": 128},
        "files": {"model.pte": {"sha256": SHA, "bytes": 10}, "tokenizer.json": {"sha256": SHA, "bytes": 3},
                  "tokenizer_config.json": {"sha256": SHA, "bytes": 2}},
        "tokenizer": {"file": "tokenizer.json", "config": "tokenizer_config.json", "vocab_size": 512},
        "generation": {"bos": {"id": 1, "text": "<s>", "add": True, "reason": "test", "template_renders_bos": False},
                       "eos_ids": [2], "chat_template": None, "system_prompts": {}, "max_context": 128,
                       "max_seq_len": 16, "temperature": 0.0, "top_p": 1.0},
        "tools": {"mobilellm-export": "0.1.0", "torch": "2.13.0"},
    }


def test_schema_file_is_the_versioned_contract():
    s = schema()
    assert s["properties"]["schema_version"] == {"enum": list(READABLE)} and SCHEMA_VERSION == READABLE[-1]
    assert set(s["required"]) == set(manifest()) and "created" not in s["properties"]
    validate(manifest())


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.pop("generation"), "'generation' is a required property"),
    (lambda m: m.update(created="2026-01-01"), "'created' was unexpected"),
    (lambda m: m["generation"]["bos"].pop("add"), "generation/bos: 'add' is a required property"),
    (lambda m: m["generation"].update(eos_ids=[]), "generation/eos_ids"),
    (lambda m: m.update(files={}), "files"),
    (lambda m: m["files"].update({"../../etc/hostname": {"sha256": SHA, "bytes": 1}}), "files"),
    (lambda m: m["files"].update({"/etc/hostname": {"sha256": SHA, "bytes": 1}}), "files"),
    (lambda m: m["files"]["model.pte"].update(sha256="xyz"), "files/model.pte/sha256"),
    (lambda m: m["target"].update(entry="../model.pte"), "target/entry"),
    (lambda m: m.update(schema_version="2"), "schema_version"),
    (lambda m: m["target"].update(min_runtime={"name": "executorch"}), "target/min_runtime: 'version' is a required"),
    (lambda m: m["target"].update(min_runtime={"name": "executorch", "version": "1.5.x"}), "target/min_runtime/version"),
    (lambda m: m["target"].update(min_runtime={"name": "executorch", "version": "1.5.1", "max": "2"}),
     "target/min_runtime: Additional properties"),
])
def test_schema_refuses_with_the_field_named(edit, needle):
    m = copy.deepcopy(manifest())
    edit(m)
    with pytest.raises(UserError, match=needle.replace("[", r"\[")):
        validate(m)


@pytest.mark.parametrize("need", [{"name": "executorch", "version": "1.5.1"}, {"name": "coreml", "version": "iOS18"},
                                  {"name": "onnxruntime", "version": "1.31.1"}])
def test_min_runtime_is_optional_and_versioned(need):
    """target.min_runtime validates in the forms the backends write; a bundle without it (written
    before it existed) still validates, without a schema_version bump."""
    m = manifest()
    validate(m)
    m["target"]["min_runtime"] = need
    validate(m)


@pytest.mark.parametrize("target,need", [("android", {"name": "executorch", "version": "1.5.1"}),
                                         ("ios", {"name": "coreml", "version": "iOS18"}),
                                         ("onnx", {"name": "onnxruntime", "version": "1.31.1"})])
def test_min_runtime_is_derived_from_the_bundle(target, need):
    """Each backend derives target.min_runtime from the files and recorded tool versions of a real
    bundle (tests/fixtures/bundles_v2: ExecuTorch 1.5.1, a spec-9 package, ORT 1.31.1), and its
    target section, which verify compares with bundle.json, carries it only when the bundle records
    one: a bundle from before the field verifies as it did, an edited one does not."""
    import json

    from mobilellm_export import backends
    from mobilellm_export.backends import release

    d = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v2" / f"tiny-llama-{target}-4bit"
    m = json.loads((d / "bundle.json").read_text())
    t = backends.of_bundle(m)
    assert t.min_runtime(d, m["tools"]) == need
    assert "min_runtime" not in m["target"] and "min_runtime" not in t.target_section(d, m)
    m["target"]["min_runtime"] = dict(need, version="1.0")
    assert t.target_section(d, m)["min_runtime"] == need
    assert release("1.5.1+cpu") == "1.5.1" and release("1.6.0.dev20260901") == "1.6.0" and release("") is None


def test_folder_artifacts_list_files_by_relative_path():
    m = manifest()
    m["files"]["model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"] = {"sha256": SHA, "bytes": 5}
    m["target"]["entry"] = "model.mlpackage"
    validate(m)


# ---- BOS policy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,add,bos,reason", [
    ("gemma3", True, 2, "add_bos_token = true"),
    ("llama2", True, 1, "add_bos_token = true"),
    ("llama3", True, 128000, "chat template starts prompts with bos_token"),  # its post-processor adds none
    ("qwen3", False, None, "no BOS token"),
])
def test_bos_policy_of_the_shared_tokenizers(name, add, bos, reason):
    p = Tokenizer.from_dir(DATA / f"{name}-tokenizer").bos_policy()
    assert (p["add"], p["id"]) == (add, bos) and reason in p["reason"]


def test_bos_policy_of_smollm2_gguf(smollm2):
    p = smollm2.tokenizer.bos_policy(smollm2.config.bos_token_id)
    assert p["add"] is False and "add_bos_token = false" in p["reason"]  # MODEL_FACTS: the GGUF sets it false


@pytest.mark.parametrize("name", ["gemma3", "llama2", "llama3", "qwen3"])
def test_cpp_tokenizer_sees_the_same_ids_as_python(name):
    """What TextLLMRunner is given (the prompt text with BOS where the policy wants it, num_bos=0)
    tokenizes in ExecuTorch's C++ tokenizer to exactly the ids verification scored in Python."""
    from pytorch_tokenizers import CppHFTokenizer

    d = DATA / f"{name}-tokenizer"
    tok = Tokenizer.from_dir(d)
    policy = tok.bos_policy()
    cpp = CppHFTokenizer()
    cpp.load(str(d / "tokenizer.json"))
    for text in ("Hello world", " leading space", "Botchan said: \"I won't!\"\nNext line."):
        want = tok.prompt_ids(text, policy)
        assert cpp.encode(tok.with_bos(text, policy), 0, 0) == want
        assert (want[0] == policy["id"]) == policy["add"]


def test_gemma3_cpp_and_python_tokenizers_disagree_without_the_policy():
    """Why BOS goes into the text: asked for no BOS, the C++ tokenizer adds none while Python
    `tokenizers` adds one through tokenizer.json's post-processor."""
    from pytorch_tokenizers import CppHFTokenizer

    d = DATA / "gemma3-tokenizer"
    cpp = CppHFTokenizer()
    cpp.load(str(d / "tokenizer.json"))
    assert cpp.encode("Hello world", 0, 0) == [9259, 1902]
    assert Tokenizer.from_dir(d).encode("Hello world") == [2, 9259, 1902]


