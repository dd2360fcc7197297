"""Fuzzing the three things a checkpoint hands us before any model exists: config.json fields,
the safetensors header, and the GGUF header. A crash is any exception other than UserError, or a
hang (an example running past HANG_S). Derandomized; FUZZ_EXAMPLES examples per target (200 in
`make test`, 2000 in `make test-all`). Each test records what it ran in FUZZ_LOG when set."""

import json
import os
import signal
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilellm_export.checkpoints.hf_config import from_hf_config
from mobilellm_export.errors import UserError
from test_sources import r1_config, write_r1_dir

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
HANG_S = 5
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


class Hang(Exception):
    pass


def bounded(fn, *a, seconds: int = HANG_S):
    """fn(*a) -> 'ok' or 'refused' (UserError); a hang raises Hang; anything else propagates (a crash)."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer in {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        fn(*a)
        return "ok"
    except UserError:
        return "refused"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _record(name: str, outcomes: list[str]) -> None:
    log = os.environ.get("FUZZ_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"target": name, "examples": len(outcomes), "ok": outcomes.count("ok"),
                                "refused": outcomes.count("refused"), "crashes": 0}) + "\n")


# ---- config.json ------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8)
FIELDS = list(r1_config(5)) + ["num_key_value_heads", "rope_scaling", "rope_theta", "head_dim", "pad_token_id",
                               "interleave_moe_layer_step", "no_rope_layer_interval", "floor_scale", "share_embedding",
                               "layer_sharing", "model_type"]


@pytest.fixture(scope="module")
def outcomes():
    seen: dict[str, list[str]] = {}
    yield seen
    for name, v in seen.items():
        _record(name, v)


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.integers(min_value=-3, max_value=5000),
                             min_size=1, max_size=4),
       drop=st.lists(st.sampled_from(FIELDS), max_size=2))
def test_fuzz_config_json(edits, drop, outcomes):
    d = {k: v for k, v in r1_config(5).items() if k not in drop}
    d.update(edits)

    def parse():
        cfg = from_hf_config(d)
        from mobilellm_export.model import expected_shapes

        expected_shapes(cfg)  # what the loader compares a checkpoint against

    outcomes.setdefault("config.json", []).append(bounded(parse))


# ---- safetensors header ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def st_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("st")
    write_r1_dir(d)
    raw = next(d.glob("*.safetensors")).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return d, raw[:8], json.loads(raw[8:8 + n]), raw[8 + n:]


HEADER_EDITS = st.one_of(
    st.tuples(st.just("noop"), st.none()),  # keeps some files valid, so later checks run too
    st.tuples(st.just("metadata"), st.dictionaries(st.text(max_size=6), st.text(max_size=6) | JSON_VALUES, max_size=3)),
    st.tuples(st.just("dtype"), st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "F64", "XX", ""])),
    st.tuples(st.just("shape"), st.lists(st.integers(min_value=-5, max_value=2**40), max_size=4)),
    st.tuples(st.just("offsets"), st.lists(st.integers(min_value=-10, max_value=2**40), max_size=3)),
    st.tuples(st.just("drop"), st.none()),
    st.tuples(st.just("rename"), st.text(max_size=12)),
    st.tuples(st.just("value"), JSON_VALUES),
)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), HEADER_EDITS), min_size=1, max_size=3),
       length_delta=st.sampled_from([0, 0, 0, -1, 1, 7, -100, 2**40]),
       cut=st.sampled_from([None, None, 1, 100, 10_000]))
def test_fuzz_safetensors_header(st_dir, edits, length_delta, cut, outcomes, tmp_path_factory):
    from mobilellm_export.checkpoints.hf import load_hf_dir

    src, _, header, data = st_dir
    header = json.loads(json.dumps(header))
    names = sorted(k for k in header if k != "__metadata__")
    for i, (what, value) in edits:
        name = names[i % len(names)]
        if what == "noop":
            continue
        if what == "metadata":
            header["__metadata__"] = value
        elif what == "drop":
            header.pop(name, None)
        elif what == "rename":
            header[value] = header.pop(name, {})
        elif what == "value":
            header[name] = value
        elif isinstance(header.get(name), dict):
            header[name][{"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[what]] = value
    body = json.dumps(header).encode()
    blob = struct.pack("<Q", max(0, len(body) + length_delta) % 2**64) + body + data
    if cut is not None:
        blob = blob[:-cut]
    d = tmp_path_factory.mktemp("fz")
    (d / "config.json").write_bytes((src / "config.json").read_bytes())
    (d / "model.safetensors").write_bytes(blob)
    outcomes.setdefault("safetensors header", []).append(bounded(load_hf_dir, d))


# ---- GGUF header --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    from test_gguf_source import write_gguf

    p = tmp_path_factory.mktemp("gg") / "tiny.gguf"
    write_gguf(p)
    raw = p.read_bytes()
    import gguf

    reader = gguf.GGUFReader(str(p))
    header_end = min(t.data_offset for t in reader.tensors)  # KV metadata + tensor infos end here
    return raw, header_end


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=255)),
                      min_size=1, max_size=6),
       cut=st.sampled_from([None, None, None, 1, 64, 4096]))
def test_fuzz_gguf_header(gguf_file, flips, cut, outcomes, tmp_path_factory):
    from mobilellm_export.checkpoints.gguf import load_gguf

    raw, header_end = gguf_file
    blob = bytearray(raw)
    for pos, byte in flips:
        blob[pos % header_end] = byte
    if cut is not None:
        blob = blob[:-cut]
    p = tmp_path_factory.mktemp("gz") / "x.gguf"
    p.write_bytes(bytes(blob))
    outcomes.setdefault("GGUF header", []).append(bounded(load_gguf, p))
