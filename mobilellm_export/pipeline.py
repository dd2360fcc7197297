"""The export pipeline, in order: load -> reference -> quantize -> lower -> bundle -> verify.

    source -> Checkpoint -> float Transformer -> quantized Transformer (torchao, once)
           -> target artifact in a temp bundle -> parity + latency report -> atomic rename
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from . import bundle as bundle_mod
from .errors import UserError
from .float_chat import build_model
from .quant.apply import quantize
from .quant.recipe import Recipe, Thresholds, load_recipe
from .runners.eager import EagerRunner
from .sources import Checkpoint, load
from .tokenizer import SYSTEM_PROMPTS
from .verify import latency, parity, report as report_mod
from .verify.text import load_text, windows

ARTIFACT = {"android": "model.pte"}
DATA_FILE = "model.ptd"  # external weights: lets a tied embedding/head share one stored copy
WINDOW = 512


class Progress:
    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet)
        self.t0 = time.perf_counter()

    def step(self, msg: str) -> None:
        self.console.print(f"[bold cyan]▸[/] {msg} [dim]({time.perf_counter() - self.t0:.0f}s)[/]")


def with_overrides(recipe: Recipe, overrides: tuple[str, ...]) -> Recipe:
    th = recipe.thresholds
    names = {f.name for f in dataclasses.fields(Thresholds)}
    for item in overrides:
        key, _, val = item.partition("=")
        if key not in names or not val:
            raise UserError(f"--threshold {item!r}: expected NAME=VALUE with NAME in {', '.join(sorted(names))}")
        try:
            th = dataclasses.replace(th, **{key: float(val)})
        except ValueError:
            raise UserError(f"--threshold {item!r}: {val!r} is not a number") from None
    return dataclasses.replace(recipe, thresholds=th)


def generation_defaults(ck: Checkpoint, max_context: int, max_seq_len: int) -> dict:
    tok = ck.tokenizer
    probe = tok.encode("a")
    r1 = ck.config.arch == "llama4_text"
    return {
        "bos_id": tok.bos_id if tok.bos_id is not None else ck.config.bos_token_id,
        "add_bos": bool(tok.bos_id is not None and probe and probe[0] == tok.bos_id),
        "eos_ids": sorted(set(ck.config.eos_token_ids) | ({tok.eos_id} if tok.eos_id is not None else set())),
        "chat_template": tok.chat_template,
        "system_prompts": SYSTEM_PROMPTS if r1 else {},
        "max_context": max_context,
        "max_seq_len": max_seq_len,
        # MobileLLM-R1's evaluation settings; greedy elsewhere.
        "temperature": 0.6 if r1 else 0.0,
        "top_p": 0.95 if r1 else 1.0,
    }


def _export_artifact(target: str, qmodel, ck: Checkpoint, path: Path, max_seq_len: int, max_context: int,
                     gen: dict, data_file: str | None) -> dict:
    if target == "android":
        from .targets.android import export_pte, prepare

        return export_pte(prepare(qmodel), ck.config, path, max_seq_len=max_seq_len, max_context=max_context,
                          eos_ids=tuple(gen["eos_ids"]), bos_id=gen["bos_id"], data_file=data_file)
    raise UserError(f"unknown target {target!r}")


def _artifact_runner(target: str, path: Path):
    if target == "android":
        from .runners.executorch import ExecuTorchRunner

        return ExecuTorchRunner(str(path))  # finds model.ptd beside it
    raise UserError(f"unknown target {target!r}")


def verify(ck: Checkpoint, recipe: Recipe, target: str, artifact: Path, *, max_context: int, eval_text: str | None,
           eval_tokens: int, progress: Progress, float_model=None, quant_model=None, quant_facts=None,
           with_latency: bool = True) -> dict:
    """Parity across the three pairs, greedy agreement, latency, threshold checks."""
    window = min(WINDOW, max_context)
    if float_model is None:
        float_model = build_model(ck, window)
    if quant_model is None:
        quant_model = copy.deepcopy(float_model)
        quant_facts = quantize(quant_model, recipe)
    ids = ck.tokenizer.encode(load_text(eval_text), add_special_tokens=False)
    wins = windows(ids, eval_tokens, window)
    rf, rq = EagerRunner(float_model, "float"), EagerRunner(quant_model, "quantized")
    ra = _artifact_runner(target, artifact)
    progress.step(f"parity: scoring {sum(map(len, wins))} tokens with float, quantized and {artifact.name}")
    lf, lq, la = (parity.window_logits(r, wins) for r in (rf, rq, ra))
    with parity.ulp_noise(quant_model.embed_tokens):  # what "as close as it can be" means for the lowering
        lq_noisy = parity.window_logits(rq, wins)
    rep = {
        "eval": {"text": eval_text or "built-in sample (Botchan excerpt)", "positions": sum(map(len, wins)),
                 "window": window, "tokens": eval_tokens},
        "parity": {"float_vs_quant": parity.compare(lf, lq, wins), "quant_vs_artifact": parity.compare(lq, la, wins),
                   "float_vs_artifact": parity.compare(lf, la, wins),
                   "quant_noise_floor": parity.compare(lq, lq_noisy, wins)},
        "quantization": quant_facts or {},
    }
    progress.step("greedy agreement: 64 tokens from float, quantized and artifact")
    g = {r.name: parity.greedy_tokens(r, ids[:16], 64) for r in (rf, rq, ra)}
    rep["greedy"] = {key: parity.agreement(g[a], g[b]) for key, (a, b) in
                     {"float_vs_quant": ("float", "quantized"), "quant_vs_artifact": ("quantized", ra.name),
                      "float_vs_artifact": ("float", ra.name)}.items()}
    rep["greedy_tokens"] = g  # the continuations themselves, per runner
    if with_latency:
        progress.step("latency: float eager and artifact (fresh processes, 2 threads)")
        # 128-token prompt and 64 decode steps, as long as they fit the context
        n_prompt = min(128, max_context // 2)
        n_decode = min(64, max_context - n_prompt - 1)
        lat_float = latency.run_child("eager", ck.source, n_prompt, n_decode,
                                      extra=["--max-context", str(max_context)])
        lat_art = latency.run_child("pte", str(artifact), n_prompt, n_decode)
        data = artifact.with_name(DATA_FILE)
        lat_art["file_mb"] = sum(p.stat().st_size for p in (artifact, data) if p.is_file()) / 1e6
        lat_float["file_mb"] = ck.config.param_count() * 4 / 1e6
        rep["latency"] = {"float eager": lat_float, artifact.name: lat_art}
    rep["checks"] = report_mod.checks(rep["parity"], recipe.thresholds)
    rep["passed"] = all(c["ok"] for c in rep["checks"])
    return rep


def export(ck: Checkpoint, recipe: Recipe, *, target: str, out: str, max_context: int, max_seq_len: int,
           eval_text: str | None, eval_tokens: int, do_verify: bool, progress: Progress) -> tuple[Path, dict]:
    if ck.tokenizer is None:
        raise UserError(f"{ck.source} has no tokenizer; the bundle needs one: pass --tokenizer path/to/tokenizer.json")
    if max_seq_len > max_context:
        raise UserError(f"--max-seq-len {max_seq_len} exceeds --max-context {max_context}")
    final = Path(out) / f"{ck.name}-{target}-{recipe.name}"
    gen = generation_defaults(ck, max_context, max_seq_len)
    progress.step(f"reference model: {ck.config.arch}, {ck.config.param_count():,} parameters")
    float_model = build_model(ck, max_context)
    progress.step(f"quantize with recipe {recipe.name}: {recipe.description or 'no quantization'}")
    qmodel = copy.deepcopy(float_model)
    qfacts = quantize(qmodel, recipe)
    with bundle_mod.atomic_dir(final) as tmp:
        art = tmp / ARTIFACT[target]
        # Tied matrices shared by lookup and head dedupe only in an external data file.
        data_file = DATA_FILE if ck.config.tie_embeddings and qfacts["tied_stored"] == "once" else None
        gen["data_file"] = data_file
        progress.step(f"lower to {target}: {art.name}{' + ' + data_file if data_file else ''} "
                      f"(max_seq_len {max_seq_len}, max_context {max_context})")
        efacts = _export_artifact(target, copy.deepcopy(qmodel), ck, art, max_seq_len, max_context, gen, data_file)
        files = [art.name] + ([data_file] if data_file else []) + ck.tokenizer.save(tmp)
        manifest = bundle_mod.write_manifest(
            tmp, model=ck.name, source={"kind": ck.kind, "id": ck.source}, target=target, recipe=recipe.to_dict(),
            config=ck.config.to_dict(), artifact_files=files, generation=gen)
        rep = {"model": ck.name, "target": target, "recipe": recipe.name, "export": efacts, "quantization": qfacts,
               "size_mb": {f: i["bytes"] / 1e6 for f, i in manifest["files"].items()}}
        if do_verify:
            # Parity windows fit in the float model's cache; the quantized eager copy is reused as is.
            rep.update(verify(ck, recipe, target, art, max_context=max_context, eval_text=eval_text,
                              eval_tokens=eval_tokens, progress=progress, float_model=float_model,
                              quant_model=qmodel, quant_facts=qfacts))
        report_mod.write(rep, tmp)
    progress.step(f"bundle written: {final}")
    return final, rep


def _emit(rep: dict, progress: Progress, quiet: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rep, indent=2))
    elif not quiet:
        report_mod.print_summary(rep, progress.console)


def export_command(model: str, *, target: str, quant: str, tokenizer: str | None, out: str, max_context: int,
                   max_seq_len: int, eval_text: str | None, eval_tokens: int, no_verify: bool,
                   thresholds: tuple[str, ...], quiet: bool, as_json: bool) -> int:
    progress = Progress(quiet or as_json)
    recipe = with_overrides(load_recipe(quant), thresholds)
    progress.step(f"load {model}")
    ck = load(model, tokenizer=tokenizer)
    torch.set_num_threads(2)
    path, rep = export(ck, recipe, target=target, out=out, max_context=max_context, max_seq_len=max_seq_len,
                       eval_text=eval_text, eval_tokens=eval_tokens, do_verify=not no_verify, progress=progress)
    _emit(rep, progress, quiet, as_json)
    if not rep.get("passed", True):
        progress.console.print(f"[red]parity thresholds failed[/] (see {path / 'report.md'})", style="bold")
        return 1
    return 0


def verify_command(bundle_dir: str, *, eval_text: str | None, eval_tokens: int, thresholds: tuple[str, ...],
                   quiet: bool, as_json: bool, with_latency: bool) -> int:
    d = Path(bundle_dir)
    m = bundle_mod.read_manifest(d)
    bundle_mod.check_files(d, m)
    progress = Progress(quiet or as_json)
    progress.step(f"{d.name}: all {len(m['files'])} files match their sha256")
    recipe = with_overrides(Recipe.from_dict(m["recipe"]), thresholds)
    ck = load(m["source"]["id"], tokenizer=str(d / "tokenizer.json"))
    torch.set_num_threads(2)
    rep = verify(ck, recipe, m["target"], d / ARTIFACT[m["target"]], max_context=m["generation"]["max_context"],
                 eval_text=eval_text, eval_tokens=eval_tokens, progress=progress, with_latency=with_latency)
    rep.update(model=m["model"], target=m["target"], recipe=recipe.name)
    _emit(rep, progress, quiet, as_json)
    return 0 if rep["passed"] else 1
