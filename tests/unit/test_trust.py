"""The pieces verify's trust rules are built from (docs/threat-model.md); the attacks themselves are
tried end to end in tests/e2e/test_untrusted_bundles.py."""

import dataclasses
import os

import pytest

from mobilellm_export.errors import UserError, load_json, parse_json, read_bytes, read_text
from mobilellm_export.quant.recipe import Gate, Recipe, Thresholds, load_recipe
from mobilellm_export.verify.thresholds import loosened, tool_bounds


def test_a_bundle_recipe_takes_the_shipped_recipes_bounds_whatever_it_records():
    shipped = load_recipe("4bit")
    claimed = dataclasses.replace(shipped, thresholds=Thresholds(kl_mean=1e9, top1_min=0.0, lowering_kl_mean=1e9),
                                  gate=Gate(kl_mean_rel=1e9))
    judged = tool_bounds(claimed)
    assert judged.thresholds == shipped.thresholds and judged.gate == shipped.gate
    assert judged.linear == claimed.linear  # the quantization settings stay: they rebuild the reference


def test_a_name_the_tool_does_not_ship_gets_the_defaults_and_is_never_read_as_a_path(tmp_path):
    evil = tmp_path / "evil.toml"
    evil.write_text("[thresholds]\nkl_mean = 1e9\n")
    for name in ("my-recipe", str(evil), "../../quant_recipes/4bit"):
        judged = tool_bounds(Recipe(name=name, thresholds=Thresholds(kl_mean=1e9)))
        assert judged.thresholds == Thresholds() and judged.gate == Gate()


def test_loosened_knows_which_way_each_bound_loosens():
    tool = Thresholds(kl_mean=0.3, top1_min=0.65, lowering_max_abs_logit=None)
    assert loosened(tool, tool) == {}
    assert loosened(tool, dataclasses.replace(tool, kl_mean=0.5, top1_min=0.5)) == {"kl_mean": [0.3, 0.5],
                                                                                   "top1_min": [0.65, 0.5]}
    # tightening, or adding a bound that was absent, is not loosening
    assert loosened(tool, dataclasses.replace(tool, kl_mean=0.1, top1_min=0.9, lowering_max_abs_logit=1.0)) == {}


def test_files_we_are_handed_are_regular_and_bounded(tmp_path):
    for special in ("/dev/zero", str(tmp_path)):
        with pytest.raises(UserError, match="not a regular file"):
            read_bytes(special, "input", 1 << 20)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):  # refused before open(), which would block
        read_text(fifo, "text")
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(UserError, match="over the 0 MB"):
        read_bytes(big, "text", 1024)
    assert read_bytes(big, "text", 4096) == b"x" * 2048
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        read_text(tmp_path / "bin.txt", "text")


def test_json_nesting_is_bounded_outside_strings(tmp_path):
    assert parse_json('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', "x") == {
        "a": "[" * 68}
    with pytest.raises(UserError, match="nested deeper than 64"):
        parse_json("[" * 65 + "]" * 65, "x")
    (tmp_path / "a.json").write_text("[1]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_json(tmp_path / "a.json")


def test_a_malformed_bundle_recipe_is_one_line():
    good = load_recipe("4bit").to_dict()
    assert Recipe.from_dict(good) == load_recipe("4bit")
    for edit in (lambda r: r["linear"].update(bits="4"), lambda r: r.update(surprise=1),
                 lambda r: r.update(overrides=[{"bits": 8}]), lambda r: r["calibration"].update(seed=0.5),
                 lambda r: r.update(thresholds=[]), lambda r: r.update(name=None)):
        bad = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
        edit(bad)
        with pytest.raises(UserError, match="its recipe is malformed"):
            Recipe.from_dict(bad)


def test_nothing_is_written_inside_a_bundle(tmp_path):
    from mobilellm_export.bundle import check_writable, outside_bundles

    b = tmp_path / "out" / "m-android-4bit"
    b.mkdir(parents=True)
    (b / "bundle.json").write_text("{}")
    for inside in (b, b / "reports", b / "a" / "b"):
        with pytest.raises(UserError, match="never writes into a bundle"):
            outside_bundles(inside, "--report-dir")
    outside_bundles(tmp_path / "out", "--out")  # the folder that holds bundles is fine
    check_writable(tmp_path / "out")


def test_a_bundle_path_that_is_a_link_leaves_nothing_behind(tmp_path):
    """The new bundle takes the link's place; the link itself (which rmtree refuses) is removed, so no
    `.NAME.xxxx.partial` link is left for the stale-cleanup, which never removed one."""
    from mobilellm_export.bundle import atomic_dir

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("the link's target is not ours to delete")
    out.mkdir()
    (out / "m-android-4bit").symlink_to(elsewhere)
    with atomic_dir(out / "m-android-4bit") as tmp:
        (tmp / "bundle.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["m-android-4bit"]
    assert not (out / "m-android-4bit").is_symlink() and (out / "m-android-4bit" / "bundle.json").is_file()
    assert (elsewhere / "keep.txt").is_file()


def test_no_bundle_claims_positions_its_model_was_not_trained_for():
    """export_spec, which export and verify both derive their spec with: a max context past the
    source's max_position_embeddings is refused in one line (RoPE angles the model never saw)."""
    from conftest import TESTS

    from mobilellm_export.checkpoints import load
    from mobilellm_export.pipeline import export_spec

    ck = load("tiny-llama", tokenizer=str(TESTS / "data" / "tiny-tokenizer"), weights=False)
    trained = ck.config.max_position_embeddings
    assert export_spec(ck, trained, 16, threads=1).max_context == trained
    with pytest.raises(UserError, match=rf"^max context {trained + 1} exceeds the {trained} positions tiny-llama was "
                                        r"trained for \(its config's max_position_embeddings\)$"):
        export_spec(ck, trained + 1, 16, threads=1)
