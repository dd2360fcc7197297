"""`verify --quick`: check a bundle without its source model, against reference logits it carries.

At export, the first evaluation window (up to 512 positions) is kept in `reference_logits.safetensors`:
its token ids, and for the float model and the quantized reference the top-k logits, the log-sum-exp
and the next token's log-probability per position (`metrics.TopK`), plus the noise floor measured
there. The file is listed in bundle.json with its sha256 like every other file.

`verify --quick` checks the hashes and the metadata the artifact itself records, runs the artifact
on those positions and judges KL and top-1 against both references by the tool's own bounds. It
takes seconds and needs no source. What it cannot tell: the references come from the bundle, so a
bundle rewritten as a whole (a new artifact, logits computed from it, hashes rewritten) passes. It
catches an artifact changed or corrupted after export, not an exporter that lies; the full `verify`
rebuilds the reference from the source, and compares this file with it.

The file is untrusted input: safetensors (no pickle), its size, key set, dtypes, shapes, ids and
values are checked before any of it is used, and each failure is one line.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mobilellm_export.errors import UserError
from mobilellm_export.metrics import TopK, TopKPairStats, kl_top

FILE = "reference_logits.safetensors"
FORMAT = 1
TOP_K = 32
MAX_POSITIONS, MAX_K, MAX_BYTES = 4096, 256, 64 << 20
FLOAT_MATCH_KL = 1e-4  # stored float logits against the float model rebuilt by the full verify
KINDS = ("float", "reference")
# What --quick does not check, said in its summary and report (the full verify checks each).
NOT_CHECKED = (
    "the references: they come from the bundle, so a bundle rewritten as a whole (artifact, logits, "
    "hashes) passes; the full verify rebuilds them from the source",
    "quality over the whole evaluation text (here: its first window)",
    "greedy generation, latency, the baseline comparison",
    "the config, chat template and generation settings against the source, and that the tokenizer is the "
    "source's",
    "the float model against transformers reading the source files (our loader's reading of them)",
)


def manifest_entry(positions: int, top_k: int) -> dict:
    return {"file": FILE, "format": FORMAT, "positions": positions, "top_k": top_k}


def capture(logits: dict[str, torch.Tensor], tokens: list[int], k: int = TOP_K) -> dict[str, torch.Tensor]:
    """The tensors of the file, from one window's logits of every runner (`parity.score`'s first
    window): the float and reference logits compressed, the noise floor (reference against its
    ulp-perturbed self) and, where the artifact ran, its KL against each reference, by the same
    estimator `--quick` uses."""
    out = {"tokens": torch.tensor(tokens, dtype=torch.int32)}
    tops = {kind: TopK.of(logits[kind], tokens, k) for kind in KINDS}
    for kind, t in tops.items():
        out.update({f"{kind}.idx": t.idx, f"{kind}.logit": t.logit, f"{kind}.lse": t.lse, f"{kind}.target": t.target})
    floor = _pair(tops["reference"], logits["noise"], tokens)
    out["floor"] = torch.tensor([floor["kl_mean"], floor["top1"]], dtype=torch.float32)
    art = logits.get("artifact")
    out["export"] = torch.tensor([_pair(tops[kind], art, tokens)["kl_mean"] if art is not None else math.nan
                                  for kind in KINDS], dtype=torch.float32)
    return out


def write(d: Path, tensors: dict[str, torch.Tensor]) -> dict:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(d) / FILE),
              metadata={"format": f"mobilellm-export reference logits {FORMAT}"})
    (Path(d) / FILE).chmod(0o644)  # safetensors writes 0600; a bundle's files are readable like any other
    n, k = tensors["float.idx"].shape
    return manifest_entry(n, k)


def _pair(ref: TopK, test: torch.Tensor, tokens: list[int]) -> dict:
    s = TopKPairStats()
    s.add(ref, test, tokens)
    return s.result()


def read(d: Path, manifest: dict) -> tuple[list[int], dict[str, TopK], dict]:
    """(token ids, {kind: TopK}, recorded {floor_kl, floor_top1, export_kl}) from an untrusted bundle;
    one line for anything that is not what `write` produces for this bundle's vocabulary and context."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    entry = manifest.get("quick_check")
    if not entry:
        raise UserError("this bundle holds no reference logits (exported with --no-verify, or by a version before "
                        "--quick): run the full verify (verify BUNDLE --source MODEL)")
    if entry.get("file") != FILE or entry.get("format") != FORMAT:
        raise UserError(f"bundle.json's quick_check names {str(entry.get('file'))[:40]!r} format "
                        f"{entry.get('format')!r}; this tool reads {FILE} format {FORMAT}")
    p = Path(d) / FILE
    if p.stat().st_size > MAX_BYTES:
        raise UserError(f"{FILE} is {p.stat().st_size >> 20} MB; reference logits are under {MAX_BYTES >> 20} MB")
    try:
        t = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{FILE} is not a readable safetensors file: {str(e)[:120]}") from None
    vocab, n, k = manifest["config"]["vocab_size"], entry["positions"], entry["top_k"]
    if not (isinstance(n, int) and 2 <= n <= min(MAX_POSITIONS, manifest["generation"]["max_context"])
            and isinstance(k, int) and 1 <= k <= min(MAX_K, vocab)):
        raise UserError(f"bundle.json's quick_check has positions {n!r} and top_k {k!r}: out of range")
    want = {"tokens": (torch.int32, (n,)), "floor": (torch.float32, (2,)), "export": (torch.float32, (2,))}
    for kind in KINDS:
        want.update({f"{kind}.idx": (torch.int32, (n, k)), f"{kind}.logit": (torch.float32, (n, k)),
                     f"{kind}.lse": (torch.float32, (n,)), f"{kind}.target": (torch.float32, (n - 1,))})
    if set(t) != set(want):
        odd = sorted(set(t) ^ set(want))[0]
        raise UserError(f"{FILE}: tensor {odd!r} is {'missing' if odd in want else 'unexpected'}")
    for name, (dtype, shape) in want.items():
        if t[name].dtype != dtype or tuple(t[name].shape) != shape:
            raise UserError(f"{FILE}: {name} is {t[name].dtype} {tuple(t[name].shape)}, expected {dtype} {shape}")
    for name in ("tokens", *(f"{kind}.idx" for kind in KINDS)):
        if int(t[name].min()) < 0 or int(t[name].max()) >= vocab:
            raise UserError(f"{FILE}: {name} holds ids outside the vocabulary of {vocab}")
    tops = {}
    for kind in KINDS:
        top = TopK(*(t[f"{kind}.{f}"] for f in ("idx", "logit", "lse", "target")))
        bad = (not all(bool(torch.isfinite(x).all()) for x in (top.logit, top.lse, top.target))
               or bool((top.lse < top.logit[:, 0] - 1e-3).any()) or bool((top.target > 1e-3).any())
               or bool((top.logit[:, 1:] > top.logit[:, :-1]).any()))
        if bad:
            raise UserError(f"{FILE}: the {kind} logits are not a model's (not finite, unsorted, or a log-sum-exp "
                            f"below its largest logit)")
        tops[kind] = top
    floor = t["floor"]
    if not (bool(torch.isfinite(floor).all()) and 0 <= float(floor[0]) and 0 <= float(floor[1]) <= 1):
        raise UserError(f"{FILE}: the recorded noise floor {floor.tolist()} is not a KL and a share")
    recorded = {"floor_kl": float(floor[0]), "floor_top1": float(floor[1]),
                "export_kl": dict(zip(("float_vs_artifact", "quant_vs_artifact"), map(float, t["export"])))}
    return t["tokens"].tolist(), tops, recorded


def parity(runner, tokens: list[int], tops: dict[str, TopK]) -> dict:
    """report["parity"] for --quick: the artifact against each stored reference, by `kl_top`."""
    logits = runner.score(tokens)
    return {"float_vs_artifact": _pair(tops["float"], logits, tokens),
            "quant_vs_artifact": _pair(tops["reference"], logits, tokens)}


def cross_checks(stored: tuple, logits: dict[str, torch.Tensor], tokens: list[int], floor_kl: float,
                 lowering_bound) -> list[dict]:
    """The full verify's check of the bundle's reference logits against the references it just
    rebuilt from the source, on the same positions. The float model computes the same everywhere
    (KL ~1e-9); the quantized reference's int8 activations may round differently on another CPU, so
    its bound is the lowering bound (relative to the noise floor measured in this run), as for an
    artifact. `stored`: `read()`'s result; `lowering_bound(floor_kl)` -> (bound, basis)."""
    from mobilellm_export.verify.report import record

    ids, tops, _ = stored
    if ids != tokens:
        return [record("metadata", "reference logits for --quick", None, None, None, FILE, status="skip",
                       message=f"{FILE} not compared: it holds other positions than this run scores "
                               f"(another --eval-text, or the tokenizer changed)")]
    out = []
    for kind, label in (("float", "float model"), ("reference", "quantized reference")):
        kl = float(kl_top(tops[kind], logits[kind]).mean())
        bound, basis = (FLOAT_MATCH_KL, "the same float model") if kind == "float" else lowering_bound(floor_kl)
        out.append(record("metadata", f"reference logits for --quick: {label}", kl, "<=", bound,
                          f"{FILE} against the {label} rebuilt here, KL over {len(ids)} positions; {basis}"))
    return out
