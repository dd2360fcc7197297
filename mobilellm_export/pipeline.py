"""The export pipeline, in order: load -> reference -> quantize -> lower -> bundle -> verify.

    source -> Checkpoint -> float Transformer -> quantized Transformer (torchao, once, in place)
           -> target.reference / prepare / export into a temp bundle -> bundle.json
           -> parity (streamed) + latency (child processes) -> report -> atomic rename

Targets are known only through `backends.Target`. Memory: the float weights exist once (the
model's parameters are the checkpoint's tensors), are dropped before lowering, and are read again
from the source for verification; latency children start only after the parent let go of its
models, so the process tree never holds two models it does not need.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mobilellm_export import backends
from mobilellm_export import bundle as bundle_mod
from mobilellm_export.backends import ExportSpec, Target
from mobilellm_export.checkpoints import Checkpoint, build_model
from mobilellm_export.console import Progress
from mobilellm_export.errors import UserError, load_json
from mobilellm_export.memory import release, settle_imports
from mobilellm_export.presets import generation_defaults as family_defaults
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import Recipe, Thresholds
from mobilellm_export.runtimes.eager import EagerRunner
from mobilellm_export.text.corpus import load_text, windows
from mobilellm_export.verify import gate as gate_mod, independent as independent_mod, latency, metadata, parity, quick
from mobilellm_export.verify import report as report_mod
from mobilellm_export.verify.parity import LogitStore
from mobilellm_export.verify.thresholds import loosened, thresholds_for as merge_thresholds, tool_bounds

WINDOW = 512
GREEDY_PROMPT, GREEDY_TOKENS = 16, 64
LATENCY_ROUNDS = 5
PAIRS = {"float_vs_quant": ("float", "reference"), "quant_vs_artifact": ("reference", "artifact"),
         "float_vs_artifact": ("float", "artifact"), "quant_noise_floor": ("reference", "noise")}


@dataclass(frozen=True)
class Checking:
    """How an artifact is checked, the same for `export` and `verify`."""
    eval_text: str | None = None  # None: the built-in sample
    eval_tokens: int = 4096
    thresholds: dict[str, float] = field(default_factory=dict)  # --threshold overrides, parsed
    latency: bool = True
    baseline: str | None = None  # an earlier report.json
    threads: int = 2


@dataclass(frozen=True)
class ExportRequest:
    source: str
    target: str  # a registered target name (the CLI owns the default)
    target_options: dict = field(default_factory=dict)
    quant: str = "4bit"  # a shipped recipe name or a .toml path
    tokenizer: str | None = None
    out: str = "out"
    max_context: int = 2048
    max_seq_len: int = 128
    calib_text: str | None = None
    size_mb: float | None = None
    verify: bool = True
    checking: Checking = Checking()


@dataclass(frozen=True)
class VerifyRequest:
    bundle: str
    report_dir: str | None = None  # where the report goes (the bundle is never written)
    source: str | None = None  # the float model, when not the one bundle.json names
    calib_text: str | None = None  # the calibration text, moved
    tokenizer: str | None = None  # the tokenizer the export was given, when not the source's own
    checking: Checking = Checking()
    quick: bool = False  # against the reference logits the bundle carries: no source, seconds


def thresholds_for(recipe: Recipe, target: str | Target, overrides: dict[str, float] | tuple[str, ...] = ()) -> Thresholds:
    """verify/thresholds.py's merge rule, for a target given by name or object."""
    return merge_thresholds(recipe, backends.get(target) if isinstance(target, str) else target, overrides)


def bounds(recipe: Recipe, target: Target, overrides: tuple[str, ...], progress: Progress) -> tuple[Thresholds, dict]:
    """The bounds to judge by, and those the command line loosened (said aloud and in the report)."""
    th = thresholds_for(recipe, target, overrides)
    loose = loosened(thresholds_for(recipe, target), th)
    if loose:
        progress.note("bounds loosened by --threshold: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in loose.items()))
    return th, loose


def verify_source(m: dict, source: str | None) -> str:
    """What verify loads as the float model: `--source`, or a model the tool itself provides (a preset,
    the offline default). A path or hub id that bundle.json names is provenance, never read or fetched:
    a bundle is untrusted, and a gate must not open files or reach the network on its say-so."""
    from mobilellm_export.checkpoints import OFFLINE_DEFAULT
    from mobilellm_export.presets import PRESETS

    if source is not None:
        return source
    src = m["source"]
    if (src.get("kind") == "preset" and src.get("id") in PRESETS) or (src.get("kind") == "gguf" and src.get("id") == OFFLINE_DEFAULT):
        return src["id"]
    raise UserError(f"this bundle was built from the {src.get('kind')} source {str(src.get('id'))[:80]!r}, which "
                    f"verify does not open on a bundle's word: pass --source PATH (the float model) to re-check it")


def generation_defaults(ck: Checkpoint, spec: ExportSpec) -> dict:
    from mobilellm_export.text.prompt_format import for_tokenizer

    tok = ck.tokenizer
    family = family_defaults(ck.config.arch)  # sampling and system prompts: presets.py's, per family
    return {
        # the chat template reduced for the apps (proved equal to it; or why it cannot be)
        "prompt_format": for_tokenizer(tok, list(spec.eos_ids), family.system_prompts),
        "bos": tok.bos_policy(ck.config.bos_token_id),
        "eos_ids": list(spec.eos_ids),
        "chat_template": tok.chat_template,
        "system_prompts": family.system_prompts,
        "max_context": spec.max_context,
        "max_seq_len": spec.max_seq_len,
        "temperature": family.temperature,
        "top_p": family.top_p,
    }


def export_spec(ck: Checkpoint, max_context: int, max_seq_len: int, threads: int) -> ExportSpec:
    if ck.tokenizer is None:
        raise UserError(f"{ck.source} has no tokenizer; the bundle needs one: pass --tokenizer path/to/tokenizer.json")
    if max_seq_len > max_context:
        raise UserError(f"--max-seq-len {max_seq_len} exceeds --max-context {max_context}")
    trained = ck.config.max_position_embeddings
    if max_context > trained:  # RoPE past its trained angles: no bundle claims positions its model never saw
        raise UserError(f"max context {max_context} exceeds the {trained} positions {ck.name} was trained for "
                        f"(its config's max_position_embeddings)")
    tok = ck.tokenizer
    eos = sorted(set(ck.config.eos_token_ids) | ({tok.eos_id} if tok.eos_id is not None else set()))
    if not eos:
        raise UserError(f"{ck.source} names no EOS token (config eos_token_id or tokenizer eos_token)")
    return ExportSpec(config=ck.config, max_context=max_context, max_seq_len=max_seq_len, eos_ids=tuple(eos),
                      bos_id=tok.bos_policy(ck.config.bos_token_id)["id"], threads=threads)


def with_calib_text(recipe: Recipe, path: str | None) -> Recipe:
    """The recipe with `--calib-text` pinned (absolute path and sha256, recorded in bundle.json)."""
    if path is None:
        return recipe
    if not recipe.needs_calibration:
        raise UserError(f"--calib-text: recipe {recipe.name} rounds to nearest and uses no calibration")
    from mobilellm_export.quant.calibrate import read_text

    text, _ = read_text(path)
    cal = dataclasses.replace(recipe.calibration, text=str(Path(path).resolve()),
                              text_sha256=hashlib.sha256(text.encode()).hexdigest())
    return dataclasses.replace(recipe, calibration=cal)


def _calib_spec(recipe: Recipe, max_context: int, **over):
    from mobilellm_export.quant import calibrate

    c = recipe.calibration
    if c.text_sha256:
        text, _ = calibrate.read_text(c.text)
        if hashlib.sha256(text.encode()).hexdigest() != c.text_sha256:
            raise UserError(f"calibration text {c.text} is not the one the bundle was built with "
                            f"(sha256 differs); give the original with --calib-text")
    spec = calibrate.CalibSpec(text=c.text or None, tokens=c.tokens, window=min(c.window, max_context), seed=c.seed)
    return dataclasses.replace(spec, **over)


def with_size_budget(recipe: Recipe, size_mb: float | None) -> Recipe:
    if recipe.auto is None:
        if size_mb is not None:
            raise UserError(f"--size-mb: recipe {recipe.name} has no [auto] table (use --quant 4bit-auto)")
        return recipe
    if size_mb is not None:
        recipe = dataclasses.replace(recipe, auto=dataclasses.replace(recipe.auto, size_mb=float(size_mb)))
    if recipe.auto.size_mb <= 0:
        raise UserError(f"recipe {recipe.name} chooses formats under a size budget: give --size-mb N")
    return recipe


def calibrator(ck: Checkpoint, model, recipe: Recipe, bos: int | None, max_context: int,
               status=lambda msg: None):
    """quantize()'s calibrate callback: the float `model` over the recipe's calibration windows
    (no longer than the context the model was built with). It runs once: a 4bit-auto search and
    the quantization that follows read the same Hessians."""
    cache: dict = {}

    def run(names):
        from mobilellm_export.quant import calibrate

        if not cache or not set(names) <= set(cache["H"]):
            cache["H"], cache["facts"] = calibrate.collect(model, ck.tokenizer, _calib_spec(recipe, max_context),
                                                           set(names) | set(cache.get("H", {})), bos, status)
        return {n: cache["H"][n] for n in names}, cache["facts"]
    return run


def plan_auto(ck: Checkpoint, model, recipe: Recipe, calibrate_cb, bos: int | None, max_context: int,
              target: Target, status=lambda msg: None) -> tuple[Recipe, dict]:
    """Resolve a 4bit-auto recipe: its per-block formats under the --size-mb budget (quant/auto.py)."""
    from mobilellm_export.quant import auto, calibrate
    from mobilellm_export.quant.size import block_linears

    names = {f"layers.{i}.{n}" for i in range(ck.config.n_layers) for n in block_linears(ck.config)} | {"lm_head"}
    H, _ = calibrate_cb(names)
    spec = _calib_spec(recipe, max_context, tokens=recipe.auto.tokens, seed=recipe.calibration.seed + 1)
    text, _ = calibrate.read_text(spec.text)
    wins = calibrate.calib_windows(ck.tokenizer.encode(text, add_special_tokens=False), spec, bos)
    budget = recipe.auto.size_mb * 1e6 - target.overhead_bytes(ck.config, max_context)
    return auto.search(model, recipe, ck.config, H, wins, budget, status)


def auto_checks(recipe: Recipe, rep: dict) -> list[dict]:
    """A 4bit-auto artifact (the model files; the tokenizer is not the recipe's to shrink) fits the
    budget it was planned for."""
    if recipe.auto is None or not recipe.auto.size_mb:
        return []
    return [report_mod.record("absolute", "artifact MB within --size-mb", gate_mod.artifact_mb(rep), "<=",
                              recipe.auto.size_mb, "4bit-auto size budget, tokenizer excluded")]


def calibration_checks(recipe: Recipe, ck: Checkpoint, eval_text: str | None, eval_tokens: int, qfacts: dict,
                       built: dict | None = None) -> list[dict]:
    """Gate records: calibration text and the scored evaluation text (its first `eval_tokens` tokens)
    share no passage; verify rebuilt the very integers that export serialised (`built`: the export's
    quantization facts, from its report.json)."""
    out = []
    if recipe.needs_calibration:
        from mobilellm_export.quant.calibrate import overlap, read_text

        cal, label = read_text(recipe.calibration.text or None)
        scored = ck.tokenizer.decode(ck.tokenizer.encode(load_text(eval_text), add_special_tokens=False)[:eval_tokens])
        shared = overlap(cal, scored)
        out.append(report_mod.record(
            "metadata", "calibration text disjoint from evaluation text", None, None, None, "shared passages of 95+ characters",
            status="warn" if shared else "pass",
            message=(f"the calibration text ({label}) shares passages with the evaluation text: quality numbers "
                     f"are optimistic" if shared else f"calibration text ({label}) and evaluation text share no passage")))
    if built and built.get("weights_sha256") and qfacts.get("weights_sha256"):
        same = built["weights_sha256"] == qfacts["weights_sha256"]
        out.append(report_mod.record(
            "metadata", "reference integers", None, "==", None, "sha256 of every quantized weight",
            status="pass" if same else "warn",
            message="the rebuilt reference holds the integers the export serialised" if same else
            f"the rebuilt reference's integers differ from the export's ({qfacts['weights_sha256']} vs "
            f"{str(built['weights_sha256'])[:64]}): lowering numbers compare against a slightly different model"))
    return out


def _libraries(target: Target, ck: Checkpoint, verifying: bool) -> tuple[str, ...]:
    """What the run will import: torchao quantizes; transformers is verify's independent reference,
    which reads a source's files (a preset has none, and never imports it)."""
    independent = verifying and ck.files is not None
    return ("torchao.quantization", *target.imports, *(("transformers",) if independent else ()))


def export(ck: Checkpoint, recipe: Recipe, target: Target, *, out: str, max_context: int, max_seq_len: int,
           checking: Checking, thresholds: Thresholds, progress: Progress, do_verify: bool = True,
           baseline: dict | None = None, lowering_fault: int | None = None,
           loosened: dict | None = None) -> tuple[Path, dict]:
    """`lowering_fault`: the seed of one fault in the lowered model (Target.seeded_fault), for the
    evidence that verification catches it; never set by the CLI."""
    spec = export_spec(ck, max_context, max_seq_len, checking.threads)
    notes = target.check(recipe, spec)
    final = Path(out) / f"{ck.name}-{target.name}-{recipe.name}"
    if final.exists() and not final.is_dir():  # before the work, not after it
        raise UserError(f"{final} exists and is not a bundle folder; move it away first")
    gen = generation_defaults(ck, spec)
    settle_imports(_libraries(target, ck, do_verify))
    with progress.step("reference model", f"{ck.config.arch}, {ck.config.param_count():,} parameters"):
        model = build_model(ck, max_context)
        # From here the model's parameters are the only float copy: each goes as it is quantized,
        # and none is left while lowering (verification reads the weights again from the source).
        ck.drop_weights()
    cal = calibrator(ck, model, recipe, spec.bos_id, max_context, status=progress.status)
    auto_facts = None
    if recipe.auto is not None and not recipe.auto.resolved:
        with progress.step("4bit-auto: sensitivity", f"each block alone in {', '.join(recipe.auto.options)}, "
                           f"budget {recipe.auto.size_mb:g} MB") as task:
            recipe, auto_facts = plan_auto(ck, model, recipe, cal, spec.bos_id, max_context, target, task.status)
        progress.note(f"  head {auto_facts['head']}; 8 bits: {', '.join(auto_facts['kept_8bit']) or 'none'}; "
                      f"predicted weights {auto_facts['weights_mb']:.1f} MB")
    with progress.step(f"quantize ({recipe.name})", recipe.description or "no quantization") as task:
        qfacts = quantize(model, recipe, cal, status=task.status)
    if auto_facts is not None:
        qfacts["auto"] = auto_facts
    release()
    reference = target.reference(model)
    del model  # `reference` holds (or shares) what is needed
    rep = {"model": ck.name, "target": target.name, "recipe": recipe.name, "threads": checking.threads,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "target_notes": notes, "quantization": qfacts, "thresholds_loosened": loosened or {}}
    with bundle_mod.atomic_dir(final) as tmp:
        with progress.step(f"lower to {target.name}", f"{target.runtime}, max_seq_len {max_seq_len}, "
                           f"max_context {max_context}") as task:
            art = target.lower(reference, spec, tmp, status=task.status, fault=lowering_fault)
        release()
        missing = [f for f in art.files if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"target {target.name} did not write {missing[0]}")
        ck.tokenizer.save(tmp)
        fields = dict(model=ck.name, source={"kind": ck.kind, "id": ck.source},
                      target={"name": target.name, "runtime": target.runtime, "entry": art.entry,
                              **({"options": target.options} if target.options else {}), **art.manifest},
                      recipe=recipe.to_dict(), config=ck.config.to_dict(),
                      tokenizer={"file": "tokenizer.json", "config": "tokenizer_config.json",
                                 "vocab_size": ck.tokenizer.vocab_size},
                      generation=gen, tools=bundle_mod.tool_versions(_tools(recipe, target)))
        manifest = bundle_mod.write_manifest(tmp, **fields)
        rep.update(export=art.facts, size_mb={f: i["bytes"] / 1e6 for f, i in manifest["files"].items()})
        # What the apps will read, re-derived from the files just written (an exporter bug that
        # writes wrong EOS ids or context into the artifact shows here).
        rep["metadata"] = metadata.derive(tmp, manifest, target)
        positions = None
        if do_verify:
            handed = [reference]
            del reference
            positions = verification(rep, ck, recipe, target, tmp, manifest, handed, qfacts, thresholds, spec,
                                     checking, baseline, progress)
            # the reference logits `verify --quick` checks against, hashed with the rest (the bundle
            # is still the temporary folder: nothing is visible until it is whole)
            entry = quick.write(tmp, rep.pop("_quick"))
            manifest = bundle_mod.write_manifest(tmp, **fields, quick_check=entry)
            rep["size_mb"] = {f: i["bytes"] / 1e6 for f, i in manifest["files"].items()}
        else:
            rep["passed"] = None
        rep["steps"] = progress.steps
        write_report(rep, tmp, positions, baseline)
    progress.note(f"bundle written: {final}")
    return final, rep


def verification(rep: dict, ck: Checkpoint, recipe: Recipe, target: Target, bundle_dir: Path, manifest: dict,
                 handed: list, qfacts: dict, thresholds: Thresholds, spec: ExportSpec, checking: Checking,
                 baseline: dict | None, progress: Progress, built: dict | None = None,
                 bundle_refs: tuple | None = None) -> dict:
    """The one verification sequence `export` and `verify` share, after the artifact exists: parity
    (float, reference, artifact, noise floor), greedy agreement, the recipe's and the target's bounds,
    calibration and budget checks, latency, then the verdict (`rep["passed"]`). Fills `rep`; returns
    the per-position series for the plots. `bundle_refs`: the bundle's reference logits (`quick.read`),
    compared with the references rebuilt here.

    `handed`: a one-element list holding the caller's last reference to the quantized reference, so
    that it is freed here, before latency's child processes load their own models."""
    rep.update(verify_parity(ck, target, bundle_dir, manifest, handed[0], thresholds, eval_text=checking.eval_text,
                             eval_tokens=checking.eval_tokens, threads=checking.threads, progress=progress,
                             baseline=baseline, spec=spec, bundle_refs=bundle_refs))
    rep["checks"] += (calibration_checks(recipe, ck, checking.eval_text, checking.eval_tokens, qfacts, built)
                      + auto_checks(recipe, rep))
    positions = rep.pop("positions")
    handed.clear()
    ck.drop_weights()
    release()
    if checking.latency:
        rep["latency"] = measure_latency(ck, target, bundle_dir, manifest, threads=checking.threads, progress=progress)
    judge(rep, recipe, baseline, bundle_dir, manifest, with_latency=checking.latency, threads=checking.threads,
          progress=progress)
    return positions


def judge(rep: dict, recipe: Recipe, baseline: dict | None, bundle_dir: Path, manifest: dict, *,
          with_latency: bool, threads: int, progress: Progress) -> None:
    """rep["gate"] and rep["passed"]: the recipe's checks, the baseline comparison (speed paired with
    the baseline's artifact where it still exists) and the metadata checks."""
    paired = None
    old = gate_mod.baseline_bundle(baseline) if baseline else None
    if old is not None and with_latency:
        with progress.step("latency: paired with the baseline", f"{old.name}, alternating rounds in one process"):
            paired = latency.run_paired(bundle_dir, old, threads=threads)
        if paired.get("unavailable"):
            progress.note(f"  paired speed: {paired['unavailable']}")
            paired = None
    rep["gate"] = gate_mod.gate(rep, rep.get("checks", []), baseline, recipe.gate, paired)
    if paired:
        rep["gate"]["paired_speed"] = paired
    rep["passed"] = rep["gate"]["passed"]


def write_report(rep: dict, d: Path, positions: dict | None, baseline: dict | None) -> None:
    """report.json, report.md, report-positions.json and the plots (linked from report.md)."""
    d.mkdir(parents=True, exist_ok=True)
    if positions:
        from mobilellm_export.verify.report import plots

        (d / "report-positions.json").write_text(json.dumps(positions))
        old = None
        if baseline:
            p = Path(baseline["_path"]).parent / "report-positions.json"
            old = json.loads(p.read_text()) if p.is_file() else None
        rep["plots"] = plots.write_plots(positions, d, report=rep, baseline_positions=old, baseline_report=baseline)
    report_mod.write(rep, d)


def _tools(recipe: Recipe, target: Target) -> tuple[str, ...]:
    return (*(("torchao",) if not recipe.is_float else ()), "tokenizers", *target.tools)


def verify_parity(ck: Checkpoint, target: Target, bundle_dir: Path, manifest: dict, reference, thresholds: Thresholds,
                  *, eval_text: str | None, eval_tokens: int, threads: int, progress: Progress,
                  baseline: dict | None = None, spec: ExportSpec | None = None,
                  bundle_refs: tuple | None = None) -> dict:
    """Parity of the float model, the target's reference and the artifact, streamed over windows
    of the eval text; greedy agreement; threshold checks. The first window's logits, compressed,
    go to rep["_quick"] (`export` stores them for `verify --quick`); with `bundle_refs`
    (`quick.read`), the bundle's own copy is compared with them.

    The float model is scored first and alone (its logits go to a temporary file), then freed
    before the artifact is loaded: the fp32 weights and the runtime never share the memory."""
    gen = manifest["generation"]
    window = min(WINDOW, gen["max_context"])
    bos = gen["bos"]["id"] if gen["bos"]["add"] else None
    ids = ck.tokenizer.encode(load_text(eval_text), add_special_tokens=False)
    release()  # ends the tokenizer's child: forked from this process as it is now, it would keep
    # every page the process frees from here on (the reference, lowering's leftovers) resident
    wins = windows(ids, eval_tokens, window, bos)
    n = sum(map(len, wins))
    evaluation = {"text": eval_text or "built-in sample (Botchan excerpt)", "positions": n, "window": window,
                  "tokens": eval_tokens, "bos": bos is not None}
    if baseline is not None:  # before minutes of scoring, not after
        gate_mod.comparable({"eval": evaluation}, baseline)
    # at most half the context, so a short one (--max-context 16, the minimum) still has room to generate
    prompt = ([bos] if bos is not None else []) + ids[:min(GREEDY_PROMPT, gen["max_context"] // 2 - (bos is not None))]
    n_greedy = min(GREEDY_TOKENS, gen["max_context"] - len(prompt))
    g: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="mobilellm-parity.") as tmp:
        # first and alone: transformers' model is freed before ours is built
        independent = independent_logits(ck, wins[0], tmp, progress)
        with progress.step("float reference", "weights read again from the source"):
            float_model = build_model(ck, gen["max_context"])
            ck.drop_weights()  # the model holds what it needs; the un-permuted originals go
        runner = EagerRunner(float_model, "float")
        with progress.step("parity: float", f"{n} positions, logits kept on disk", total=n, unit="positions") as t:
            stored = LogitStore(tmp, "float").fill(runner, wins, t.advance)
        source_check = (independent_mod.compare(stored.window(0), independent[0].window(0), independent[1])
                        if isinstance(independent, tuple) else independent)
        with progress.step("greedy: float", f"{n_greedy} tokens", total=n_greedy, unit="tokens") as t:
            g["float"] = parity.greedy_tokens(runner, prompt, n_greedy, t.advance)
        del runner, float_model
        release()
        runners = {"float": stored, "reference": EagerRunner(reference, "reference")}
        runners["noise"] = parity.NoisyRunner(runners["reference"], reference.embed_tokens)
        artifact = target.runner(bundle_dir, manifest, threads=threads)
        if artifact is not None:
            runners["artifact"] = artifact
        pairs = {k: v for k, v in PAIRS.items() if set(v) <= set(runners)}
        others = [k for k in runners if k != "float"]
        kept: dict = {}

        def keep(logits):
            kept["tensors"] = quick.capture(logits, wins[0])
            if bundle_refs is not None:
                kept["checks"] = quick.cross_checks(bundle_refs, logits, wins[0], float(kept["tensors"]["floor"][0]),
                                                    lambda floor: report_mod.lowering_kl_bound(thresholds, floor))
        with progress.step("parity", f"{n} positions through {', '.join(others)} against the float logits",
                           total=n, unit="positions") as t:
            results, positions = parity.score(runners, pairs, wins, t.advance, first=keep)
    rep = {"eval": evaluation, "parity": results, "artifact_runs_here": artifact is not None,
           "positions": {"window": window, "positions": n, "pairs": positions}, "_quick": kept["tensors"]}
    greedy_runners = [k for k in ("reference", "noise", "artifact") if k in runners]
    with progress.step("greedy", f"{n_greedy} tokens from {', '.join(greedy_runners)}",
                       total=n_greedy * len(greedy_runners), unit="tokens") as t:
        recorded = parity.Recorder(runners["reference"])  # its greedy logits are its decode path too
        g.update({k: parity.greedy_tokens(recorded if k == "reference" else runners[k], prompt, n_greedy, t.advance)
                  for k in greedy_runners})
    rep["greedy"] = {key: parity.agreement(g[a], g[b]) for key, (a, b) in pairs.items() if a in g and b in g}
    rep["greedy_tokens"] = g
    if len(g.get("reference", [])) >= 2:
        steps = len(g["reference"])
        decode_pairs = {k: PAIRS[k] for k in ("quant_vs_artifact", "quant_noise_floor") if set(PAIRS[k]) <= set(runners)}
        with progress.step("decode path", f"{steps} single-token steps on the reference's greedy tokens, "
                           f"{', '.join(decode_pairs)}"):
            ref_rows = torch.stack(recorded.logits[:steps])  # row i predicts g["reference"][i]
            rep["decode_path"] = {k: parity.decode_path(ref_rows, runners[b], prompt, g["reference"])
                                  for k, (_, b) in decode_pairs.items()}
    rep["checks"] = [source_check] + report_mod.checks(rep["parity"], thresholds) + kept.get("checks", [])
    # judge() adds the rest
    if spec is not None and any(not c["ok"] for c in rep["checks"] if c["suite"] == "lowering"):
        from mobilellm_export.verify.localise import localise

        with progress.step("localise", "the first op whose output leaves its noise floor, given the artifact's input"):
            try:
                found = localise(target, reference, spec, wins[0], threads=threads, artifact=runners.get("artifact"))
            except Exception as e:  # a diagnosis that fails must not cost the report it would explain
                found = {"first": None, "message": f"the localiser failed: {type(e).__name__}: {e}"[:300]}
        if found is not None:
            rep["localise"] = found
            progress.note(f"  {found['message']}")
    return rep


def independent_logits(ck: Checkpoint, window: list[int], tmp: str, progress: Progress):
    """transformers' logits on the first window (a LogitStore: on disk) and its version; or the
    `skip` record that says why there are none (verify/independent.py)."""
    with progress.step("independent reference", "transformers reads the source files; the first window"):
        model, why = independent_mod.load(ck)
        if model is None:
            progress.note(f"  {independent_mod.CHECK}: not applicable: {why}")
            return independent_mod.skipped(why)
        try:
            store = LogitStore(tmp, "transformers").fill(independent_mod.Runner(model), [window])
        except Exception as e:  # transformers' own code failing on this source is no verdict on the bundle
            why = f"transformers failed to score the source: {type(e).__name__}: {str(e).strip()[:200]}"
            progress.note(f"  {independent_mod.CHECK}: not applicable: {why}")
            return independent_mod.skipped(why)
        finally:
            del model
            release()
    return store, why


def measure_latency(ck: Checkpoint, target: Target, bundle_dir: Path, manifest: dict, *, threads: int,
                    progress: Progress) -> dict:
    """Float eager, the artifact in the runtime's own loop (what the apps see) and the artifact in
    our Python loop, each in a fresh child process: warm-up, then LATENCY_ROUNDS rounds."""
    gen = manifest["generation"]
    n_prompt = min(128, gen["max_seq_len"], gen["max_context"] // 2)
    n_decode = min(64, gen["max_context"] - n_prompt - 2)
    rows = {}
    kinds = [("float eager", "eager", ck.source, ["--max-context", str(gen["max_context"])]),
             (f"{manifest['target']['entry']} app loop", "app", str(bundle_dir), []),
             (f"{manifest['target']['entry']} Python loop", "loop", str(bundle_dir), [])]
    for label, kind, what, extra in kinds:
        with progress.step(f"latency: {label}", f"warm-up + {LATENCY_ROUNDS} rounds of {n_prompt} prompt + "
                           f"{n_decode} new tokens, {threads} threads, fresh process"):
            row = latency.run_child(kind, what, n_prompt, n_decode, LATENCY_ROUNDS, threads, extra)
        if row.get("unavailable"):
            progress.note(f"  {label}: {row['unavailable']}")
            continue
        rows[label] = row
    files = gate_mod.artifact_mb({f: i["bytes"] / 1e6 for f, i in manifest["files"].items()})
    for label, row in rows.items():
        row["file_mb"] = ck.config.param_count() * 4 / 1e6 if label == "float eager" else files
    app, loop = (next((r for k, r in rows.items() if k.endswith(s)), None) for s in ("app loop", "Python loop"))
    if app and loop and loop["decode_tok_s"]:
        rows["app_vs_python_loop"] = {k: (app[k] / loop[k] if app[k] and loop[k] else None)
                                      for k in ("prefill_tok_s", "decode_tok_s")}
    return rows


def export_command(req: ExportRequest, progress: Progress) -> tuple[Path, dict]:
    from mobilellm_export.checkpoints import load
    from mobilellm_export.quant.recipe import load_recipe

    c = req.checking
    if c.eval_text:
        load_text(c.eval_text)  # a wrong path, a device or a FIFO fails now, not after minutes of export
    tgt = backends.get(req.target, req.target_options)
    recipe = with_size_budget(with_calib_text(load_recipe(req.quant), req.calib_text), req.size_mb)
    th, loose = bounds(recipe, tgt, c.thresholds, progress)
    base = gate_mod.load_baseline(c.baseline) if c.baseline else None
    if base is not None and not req.verify:
        raise UserError("--baseline needs verification; drop --no-verify")
    bundle_mod.check_writable(Path(req.out))  # before minutes of work, not after
    torch.set_num_threads(c.threads)
    with progress.step("load", req.source):
        ck = load(req.source, tokenizer=req.tokenizer)
    if ck.kind == "preset":
        from mobilellm_export.presets import RANDOM_WEIGHTS

        progress.note(f"note: {ck.name} has {RANDOM_WEIGHTS}")
    return export(ck, recipe, tgt, out=req.out, max_context=req.max_context, max_seq_len=req.max_seq_len,
                  checking=c, thresholds=th, progress=progress, do_verify=req.verify, baseline=base, loosened=loose)


@dataclass
class Opened:
    """A bundle after every check verify makes before it quantizes anything (`open_bundle`)."""
    d: Path
    m: dict
    recipe: Recipe
    tgt: Target
    spec: ExportSpec
    ck: Checkpoint
    meta: list[dict]
    bounds: tuple[Thresholds, dict]
    notes: list[str]
    base: dict | None


def open_bundle(req: VerifyRequest, progress: Progress) -> Opened:
    """The trust checks (docs/threat-model.md): the command line's inputs, the bundle's closed world
    and hashes, its recipe's types, bounds from the tool, the source from the command line, every
    value the apps read re-derived from the files and from the source, and the artifact loaded once.
    Everything verify reads here is in the bundle or on the command line."""
    from mobilellm_export.checkpoints import load, own_tokenizer
    from mobilellm_export.text.tokenizer import Tokenizer

    c = req.checking
    if c.eval_text:
        load_text(c.eval_text)  # before any work
    d = Path(req.bundle)
    base = gate_mod.load_baseline(c.baseline) if c.baseline else None
    if req.report_dir is not None:
        bundle_mod.check_writable(Path(req.report_dir), "--report-dir")
    m = bundle_mod.read_manifest(d)
    bundle_mod.check_files(d, m)
    recipe = tool_bounds(Recipe.from_dict(m["recipe"]))
    source = verify_source(m, req.source)  # before any work
    cal = recipe.calibration
    if req.calib_text is not None:  # the text, given on the command line: the same bytes the export read
        if not cal.text_sha256:
            raise UserError("--calib-text: this bundle was calibrated on the built-in text (or not at all)")
        recipe = dataclasses.replace(recipe, calibration=dataclasses.replace(cal, text=str(Path(req.calib_text).resolve())))
    elif cal.text or cal.text_sha256:
        # the path bundle.json names is provenance: never opened (a FIFO would hang verify, /dev/zero
        # fill its memory, and any file's hash would answer an attacker's question)
        raise UserError(f"this bundle was calibrated on a text of its own (sha256 {cal.text_sha256[:16] or '?'}...): "
                        f"pass it with --calib-text FILE")
    if recipe.calibration.text_sha256:
        _calib_spec(recipe, m["generation"]["max_context"])  # a changed text fails before any work
    progress.note(f"{d.name}: all {len(m['files'])} files match their sha256, none unlisted")
    tgt = backends.of_bundle(m)
    gen = m["generation"]
    meta = metadata.derive(d, m, tgt)
    if base is None:  # the files' own disagreements first: the source comparison below builds on them
        metadata.require(meta)
    torch.set_num_threads(c.threads)
    with progress.step("load", source):
        # the source's own tokenizer (or the one the export was given, named again here), to check
        # the bundle's is it; the reference is then built with the bundle's, as the apps run it
        own = (Tokenizer.from_dir(req.tokenizer), f"--tokenizer {req.tokenizer}") if req.tokenizer else \
            own_tokenizer(source)
        ck = load(source, tokenizer=str(d / m["tokenizer"]["file"]))
    settle_imports(_libraries(tgt, ck, True))
    # EOS ids and BOS id re-derived from the source (its config, and the tokenizer just checked to
    # be its own), as export derives them: an exporter that wrote the same wrong value into every
    # file of the bundle agrees with itself, not with this
    spec = export_spec(ck, gen["max_context"], gen["max_seq_len"], c.threads)
    meta.append(metadata.tokenizer_is_sources(ck.tokenizer, *own))
    meta += metadata.from_source(m, ck.config.to_dict(), generation_defaults(ck, spec))
    bad = [x["name"] for x in meta if not x["ok"]]
    if base is None:  # a hand-run verify stops at the first disagreement, in one line
        metadata.require(meta)
    elif bad:  # a CI gate run goes on: the disagreement is a failed check in the report and JUnit file
        progress.note(f"{d.name}: bundle.json disagrees with the files on {', '.join(bad)} (a failed gate check)")
    if not bad:
        progress.note(f"{d.name}: EOS ids, context, vocabulary, chat template, BOS policy, pre-normalization, "
                      f"model config and app settings match the files and the source")
    with progress.step("load the artifact", "fails fast on a file its runtime cannot load"):
        probe = tgt.runner(d, m, threads=c.threads)
        del probe
        release()
    th_loose = bounds(recipe, tgt, c.thresholds, progress)
    notes = tgt.check(recipe, spec)  # the same target the export used, options included
    return Opened(d, m, recipe, tgt, spec, ck, meta, th_loose, notes, base)


def verify_command(req: VerifyRequest, progress: Progress) -> dict:
    """Re-check a bundle. The report goes to `req.report_dir` when given (the bundle is never written)."""
    if req.quick:
        return quick_command(req, progress)
    o = open_bundle(req, progress)
    c, d, m, recipe, tgt, spec, ck, meta, base, notes = (req.checking, o.d, o.m, o.recipe, o.tgt, o.spec, o.ck,
                                                         o.meta, o.base, o.notes)
    (th, loose), gen = o.bounds, m["generation"]
    refs = quick.read(d, m) if m.get("quick_check") else None  # a malformed file fails before minutes of work
    with progress.step("reference model + quantize", recipe.name):
        qmodel = build_model(ck, gen["max_context"])
        ck.drop_weights()  # as in export: the float copy goes as it is quantized; parity reads it again
        qfacts = quantize(qmodel, recipe, calibrator(ck, qmodel, recipe, gen["bos"]["id"], gen["max_context"]))
    handed = [tgt.reference(qmodel)]
    del qmodel
    rep = {"model": m["model"], "target": tgt.name, "recipe": recipe.name, "threads": c.threads,
           "target_notes": notes, "quantization": qfacts, "metadata": meta, "thresholds_loosened": loose,
           "size_mb": {f: i["bytes"] / 1e6 for f, i in m["files"].items()},
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    built = None
    if (d / "report.json").is_file():  # unhashed, so untrusted: only ever compared, never obeyed
        try:
            built = load_json(d / "report.json", "report.json").get("quantization")
        except UserError:
            built = None  # an unreadable old report only costs this one comparison
        built = built if isinstance(built, dict) else None
    positions = verification(rep, ck, recipe, tgt, d, m, handed, qfacts, th, spec, c, base, progress, built, refs)
    del rep["_quick"]  # a verify never writes into the bundle
    rep["steps"] = progress.steps
    if req.report_dir is not None:
        write_report(rep, Path(req.report_dir), positions, base)
    return rep


def quick_command(req: VerifyRequest, progress: Progress) -> dict:
    """`verify --quick`: hashes, the metadata the files themselves record, and the artifact on the
    positions whose reference logits the bundle carries (verify/quick.py), judged by the tool's
    bounds. No source, no quantization; says what it did not check."""
    c = req.checking
    given = [f for f, v in (("--source", req.source), ("--calib-text", req.calib_text), ("--baseline", c.baseline),
                            ("--eval-text", c.eval_text), ("--tokenizer", req.tokenizer)) if v]
    if given:
        raise UserError(f"--quick checks the bundle against the reference logits it carries; {given[0]} belongs to "
                        f"the full verify (drop --quick)")
    if req.report_dir is not None:
        bundle_mod.check_writable(Path(req.report_dir), "--report-dir")
    d = Path(req.bundle)
    m = bundle_mod.read_manifest(d)
    bundle_mod.check_files(d, m)
    progress.note(f"{d.name}: all {len(m['files'])} files match their sha256, none unlisted")
    recipe = tool_bounds(Recipe.from_dict(m["recipe"]))
    tgt = backends.of_bundle(m)
    meta = metadata.derive(d, m, tgt)
    metadata.require(meta)
    ids, tops, recorded = quick.read(d, m)
    th, loose = bounds(recipe, tgt, c.thresholds, progress)
    torch.set_num_threads(c.threads)
    with progress.step("load the artifact", m["target"]["entry"]):
        runner = tgt.runner(d, m, threads=c.threads)
    if runner is None:
        raise UserError(f"the {tgt.runtime} artifact cannot run on this machine, so --quick cannot score it "
                        f"(its hashes and metadata match)")
    with progress.step("parity (quick)", f"{len(ids)} positions against the float and quantized reference logits "
                       f"in {quick.FILE}", total=len(ids), unit="positions") as t:
        results = quick.parity(runner, ids, tops)
        t.advance(len(ids))
    floor = {"kl_mean": recorded["floor_kl"], "top1": recorded["floor_top1"]}
    rep = {"model": m["model"], "target": tgt.name, "recipe": recipe.name, "threads": c.threads, "mode": "quick",
           "eval": {"text": f"{quick.FILE} (the first window of the export's evaluation text)", "positions": len(ids),
                    "window": len(ids), "bos": None},
           "parity": results, "metadata": meta, "thresholds_loosened": loose,
           "quick": {"noise_floor": floor, "export_kl": recorded["export_kl"], "top_k": tops["float"].idx.shape[1],
                     "estimator": "KL over the reference's top-k tokens and one bin for the rest: a lower bound "
                                  "of the full KL", "not_checked": list(quick.NOT_CHECKED)},
           "size_mb": {f: i["bytes"] / 1e6 for f, i in m["files"].items()},
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    checks = report_mod.checks({**results, "quant_noise_floor": floor}, th)
    rep["gate"] = gate_mod.gate(rep, checks, None, recipe.gate)
    rep["passed"] = rep["gate"]["passed"]
    rep["steps"] = progress.steps
    if req.report_dir is not None:
        write_report(rep, Path(req.report_dir), None, None)
    return rep
