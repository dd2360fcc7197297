"""`Tokenizer.identity` and verify's check that a bundle's tokenizer is its source's: a source
tokenizer and the copy a bundle stores of it are one identity (the normalizer steps a bundle moves
into its config included), and each kind of difference another model's tokenizer brings is named."""

import json
import shutil

import pytest

from conftest import TESTS

from mobilellm_export.checkpoints import own_tokenizer
from mobilellm_export.text.tokenizer import Tokenizer
from mobilellm_export.verify import metadata

TINY = TESTS / "data" / "tiny-tokenizer"


def _edited(tmp_path, edit, name="edited"):
    """A copy of the tiny tokenizer with `edit(tokenizer_json_dict, config_dict)` applied."""
    d = tmp_path / name
    shutil.copytree(TINY, d)
    tj, cfg = json.loads((d / "tokenizer.json").read_text()), json.loads((d / "tokenizer_config.json").read_text())
    edit(tj, cfg)
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return Tokenizer.from_dir(d)


def _bundle_copy(tok: Tokenizer, tmp_path, name="bundle") -> Tokenizer:
    d = tmp_path / name
    d.mkdir()
    tok.save(d)  # what export writes into a bundle
    return Tokenizer.from_dir(d)


@pytest.mark.parametrize("normalizer", [None, {"type": "NFC"},
                                        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}])
def test_a_bundle_copy_has_its_sources_identity(normalizer, tmp_path):
    """Also where the bundle moves the normalizer's steps into its config (NFC, a literal Replace)."""
    src = _edited(tmp_path, lambda tj, cfg: tj.update(normalizer=normalizer))
    copy = _bundle_copy(src, tmp_path)
    moved = json.loads((tmp_path / "bundle" / "tokenizer.json").read_text())["normalizer"] is None
    assert moved or normalizer is None  # the case the identity must see through
    assert copy.identity() == src.identity()
    row = metadata.tokenizer_is_sources(copy, src, "the source's own tokenizer")
    assert row["ok"] and row["manifest"] == row["derived"], row


def _swap_merge(tj, cfg):
    m = tj["model"]["merges"]
    m[0], m[1] = m[1], m[0]  # the same merges, another priority: other ids for some words


def _swap_ids(tj, cfg):
    v = tj["model"]["vocab"]
    a, b = (next(t for t, i in v.items() if i == n) for n in (300, 301))
    v[a], v[b] = v[b], v[a]  # the same pieces under other ids: what an embedding table indexes


@pytest.mark.parametrize("edit,part", [
    (_swap_ids, "vocabulary"),
    (_swap_merge, "merges"),
    (lambda tj, cfg: tj["added_tokens"][0].update(special=False), "added tokens"),
    (lambda tj, cfg: cfg.update(eos_token="<unk>"), "special tokens"),
    (lambda tj, cfg: cfg.update(add_bos_token=False), "BOS/EOS flags"),
    (lambda tj, cfg: cfg.update(chat_template="{{ messages[0]['content'] }}"), "chat template"),
    (lambda tj, cfg: cfg.update(model_max_length=8), "other tokenizer_config settings"),
    (lambda tj, cfg: tj.update(normalizer={"type": "Lowercase"}), "normalizer"),
    (lambda tj, cfg: tj.update(normalizer={"type": "NFC"}), "pre-normalization"),
    (lambda tj, cfg: tj["pre_tokenizer"].update(add_prefix_space=True), "pre-tokenizer"),
    (lambda tj, cfg: tj.update(decoder=None), "decoder"),
])
def test_each_difference_is_named_in_one_line(edit, part, tmp_path):
    src = Tokenizer.from_dir(TINY)
    other = _bundle_copy(_edited(tmp_path, edit), tmp_path)
    row = metadata.tokenizer_is_sources(other, src, "the source's own tokenizer")
    assert not row["ok"]
    assert row["message"].startswith(f"the bundle's tokenizer is not the source's own tokenizer: its {part} differ")
    assert "\n" not in row["message"] and len(row["message"]) < 400, row["message"]
    with pytest.raises(Exception, match="its " + part):
        metadata.require([row])


def test_not_applicable_is_said_not_passed(tmp_path):
    tok, why = own_tokenizer("tiny-r1")
    assert tok is None and "preset" in why
    row = metadata.tokenizer_is_sources(Tokenizer.from_dir(TINY), tok, why)
    assert row["status"] == "skip" and why in row["message"]
    from mobilellm_export.verify.report import metadata_records

    (rec,) = metadata_records([row])
    assert rec["status"] == "skip" and "not applicable" in rec["message"]
    (tmp_path / "config.json").write_text("{}")  # a folder with no tokenizer.json: also not applicable
    tok, why = own_tokenizer(str(tmp_path))
    assert tok is None and why


def test_a_hf_folders_own_tokenizer_is_read(tmp_path):
    """own_tokenizer reads the folder's tokenizer.json from the headers alone (no weights)."""
    from faults import harness

    src = harness.tiny_r1_dir(tmp_path / "r1")
    tok, why = own_tokenizer(str(src))
    assert tok is not None and why.endswith("own tokenizer")
    assert tok.identity() == Tokenizer.from_dir(src).identity()
