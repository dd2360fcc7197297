"""The gate's evidence cannot go stale silently (issue 27).

A results file whose rows are gate verdicts records the thresholds and `[gate]` tolerances it was
judged under (benchmarks/provenance.py: `thresholds_in_force`). Here they are recomputed from the
recipes and targets as the code defines them now: a recipe or target bound that moved since the run
fails this test until the file is re-run (or moved to benchmarks/results/stale/ and its numbers
taken out of the docs). Files older than this rule sit in stale/, listed in its README.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
# Files whose rows are the gate's verdicts: each must say under which bounds.
GATE_EVIDENCE = ("shared_path_faults.json", "gate_faults.json", "gate_baselines.json", "false_alarms.json")


def _recorded() -> list[Path]:
    return sorted(p for p in RESULTS.glob("*.json") if "thresholds" in json.loads(p.read_text()).get("provenance", {}))


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_results_file_records_commit_date_and_tools(path):
    prov = json.loads(path.read_text()).get("provenance", {})
    assert prov.get("commit") and prov.get("date") and prov.get("tools"), f"{path.name}: no commit, date or tools"


@pytest.mark.parametrize("name", GATE_EVIDENCE)
def test_gate_evidence_records_the_thresholds_it_was_judged_under(name):
    path = RESULTS / name
    if not path.exists():  # not made yet (or moved to stale/): no document may link to it as evidence
        docs = [p for p in [REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").rglob("*.md")]
                if f"results/{name})" in p.read_text()]
        assert not docs, f"{[str(d.relative_to(REPO)) for d in docs]} cite {name}, which does not exist"
        return
    prov = json.loads(path.read_text()).get("provenance", {})
    assert prov.get("commit") and prov.get("date") and prov.get("tools"), f"{name}: no commit, date or tools"
    assert prov.get("thresholds"), f"{name}: records no thresholds; re-run it or move it to results/stale/"


def test_recorded_thresholds_are_those_in_force():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from provenance import thresholds_in_force

    files = _recorded()
    assert files or not any((RESULTS / n).exists() for n in GATE_EVIDENCE)
    for path in files:
        recorded = json.loads(path.read_text())["provenance"]["thresholds"]
        targets = sorted({t for r in recorded.values() for t in r["targets"]})
        now = json.loads(json.dumps(thresholds_in_force(sorted(recorded), targets)))  # JSON's own types
        for recipe, r in recorded.items():
            assert r["gate"] == now[recipe]["gate"], f"{path.name}: {recipe}'s [gate] tolerances changed since the run"
            for t, bounds in r["targets"].items():
                moved = {k: (v, now[recipe]["targets"][t].get(k)) for k, v in bounds.items()
                         if now[recipe]["targets"][t].get(k) != v}
                assert not moved, f"{path.name}: {recipe} on {t}: bounds moved since the run (then, now): {moved}"


def test_a_moved_bound_is_seen(tmp_path, monkeypatch):
    """The comparison above can fail: a results file recorded under a `kl_mean` other than the
    recipe's fails it."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from provenance import thresholds_in_force

    rec = json.loads(json.dumps(thresholds_in_force(["4bit"], ["onnx"])))
    rec["4bit"]["targets"]["onnx"]["kl_mean"] = 0.42  # the pre-2026-12-03 bound
    (tmp_path / "x.json").write_text(json.dumps({"provenance": {"thresholds": rec}}))
    monkeypatch.setattr(sys.modules[__name__], "RESULTS", tmp_path)
    with pytest.raises(AssertionError, match="kl_mean"):
        test_recorded_thresholds_are_those_in_force()
