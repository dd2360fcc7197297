"""Run a seeded fault through the gate, the way a user's CI does.

    tiny_r1_dir(dir)                 a MobileLLM-R1-layout HF folder (4 layers, QK-norm, vocab 512,
                                     its own 512-id tokenizer), loaded through the normal HF source
                                     path; lowering costs ~10-20 s a layer on 2 cores
    export_bundle(source, out, ...)  pipeline.export (+ gate) with the real or a faulty target
    run_fault(fault, clean_report, workdir) -> one result row

The gate is run as a user runs it: `prepare` and `export` faults through `pipeline.export` with
the faulty target and `baseline=` the clean report (what `mobilellm-export export --baseline`
does: the code under test is the target, and `verify.localise` re-lowers with that same target);
`file` faults on a clean bundle edited afterwards, through `pipeline.verify_command(bundle,
baseline=...)`. On random weights the recipe's absolute end-to-end bounds (calibrated on
SmolLM2) can fail a clean export too, so a check counts as catching a fault only if it passes on
the clean run of the same model and recipe: `caught_by` = failed checks - checks failed clean.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import traceback
from pathlib import Path

import torch

from mobilellm_export.errors import UserError
from mobilellm_export.backends.executorch.xnnpack import Android

from . import Fault

# Small settings for every run here (clean and faulty alike: a baseline must be scored the same way).
SETTINGS = {"max_context": 256, "max_seq_len": 32, "eval_tokens": 512}
THREADS = 1


def tiny_r1_config(n_layers: int = 4) -> dict:
    """MobileLLM-R1's config.json layout (Llama-4 dense, QK-norm, interleaved RoPE, every layer
    RoPE), at tiny dims with a 512-id vocabulary."""
    return {
        "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "vocab_size": 512,
        "hidden_size": 64, "intermediate_size": 128, "intermediate_size_mlp": 128, "num_hidden_layers": n_layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "attention_bias": False, "use_qk_norm": True, "no_rope_layers": [1] * n_layers,
        "num_local_experts": 0, "moe_layers": [], "tie_word_embeddings": True, "max_position_embeddings": 4096,
        "attention_chunk_size": 32768, "rope_theta": 8e6, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    }


# ---- the tiny model -----------------------------------------------------------------------------

def make_tokenizer(d: Path, reversed_words: bool = False, with_config: bool = True) -> Path:
    """A 512-id byte-level BPE trained on the built-in sample (<unk> 0, <s> 1, </s> 2), as
    tests/conftest.py's tiny_tokenizer. reversed_words: trained on the sample with every word spelt
    backwards: same size and special ids, other merges (a tokenizer of "another model")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mobilellm_export.text.corpus import SAMPLE

    text = SAMPLE.read_text(encoding="utf-8")
    if reversed_words:
        text = re.sub(r"\w+", lambda m: m.group(0)[::-1], text)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(text.splitlines(), trainer)
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    if with_config:
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    return d


def tiny_r1_dir(d: Path, seed: int = 0, n_layers: int = 4) -> Path:
    """Write the tiny R1-layout HF folder (config.json, model.safetensors under the R1 tensor names,
    tokenizer) once; return it. Lowering costs ~10-20 s a layer on 2 cores: the CI tests use 2."""
    from safetensors.torch import save_file

    from mobilellm_export.checkpoints.hf_config import from_hf_config
    from mobilellm_export.model import random_weights

    d = Path(d)
    if (d / "model.safetensors").is_file():
        return d
    tmp = d.with_name(d.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = tiny_r1_config(n_layers)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    sd = random_weights(from_hf_config(config), seed)
    tensors = {("model." + k).replace(".mlp.", ".feed_forward."): v.contiguous() for k, v in sd.items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    make_tokenizer(tmp)
    tmp.rename(d)
    return d


# ---- the faulty target ----------------------------------------------------------------------------

class FaultyAndroid(Android):
    """The Android target with one fault. Its name stays "android": the bundle looks like any
    other, and `verify` judges it with the real target."""

    def __init__(self, fault: Fault):
        super().__init__()  # the target's options at their defaults, as a plain `--target android`
        self.fault = fault

    def prepare(self, model, spec):
        prepared = super().prepare(model, spec)
        if self.fault.level == "prepare":
            self.fault.apply(prepared)
        return prepared

    def export(self, model, spec, out_dir, status=lambda msg: None):
        if self.fault.level != "export":
            return super().export(model, spec, out_dir, status)
        art = super().export(model, self.fault.apply(spec), out_dir, status)
        # bundle.json records what a correct exporter would have written: only the .pte lies.
        art.manifest["constant_methods"] = {**art.manifest["constant_methods"], "get_eos_ids": list(spec.eos_ids),
                                            "get_max_seq_len": spec.max_seq_len,
                                            "get_max_context_len": spec.max_context}
        return art


# ---- runs ---------------------------------------------------------------------------------------------

def _progress():
    from mobilellm_export.console import Progress

    return Progress(quiet=True)


def export_bundle(source: str, out: Path, recipe: str, *, target=None, baseline: str | None = None,
                  verify: bool = True, tokenizer: str | None = None, seed: int = 0, threads: int = THREADS):
    """pipeline.export with the small settings -> (bundle folder, report). `target` defaults to the
    real Android target; a preset source takes `seed` (an HF folder has its own weights)."""
    from mobilellm_export import pipeline
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.checkpoints import load
    from mobilellm_export.verify import gate

    rec = load_recipe(recipe)
    tgt = target or Android()
    torch.set_num_threads(threads)
    ck = load(source, tokenizer=tokenizer, seed=seed)
    return pipeline.export(ck, rec, tgt, out=str(out), max_context=SETTINGS["max_context"],
                           max_seq_len=SETTINGS["max_seq_len"],
                           checking=pipeline.Checking(eval_tokens=SETTINGS["eval_tokens"], latency=False, threads=threads),
                           do_verify=verify, thresholds=pipeline.thresholds_for(rec, tgt), progress=_progress(),
                           baseline=gate.load_baseline(baseline) if baseline else None)


def verify_bundle(bundle: Path, baseline: str | None, threads: int = THREADS, source: str | None = None) -> dict:
    """`source`: the float model, as `verify --source` gives it (verify never loads the one a bundle names)."""
    from mobilellm_export import pipeline

    return pipeline.verify_command(pipeline.VerifyRequest(str(bundle), source=source, checking=pipeline.Checking(
        eval_tokens=SETTINGS["eval_tokens"], latency=False, threads=threads, baseline=baseline)), _progress())


def rehash(bundle: Path) -> None:
    """Re-write bundle.json over the files as they are now, with the project's own manifest writer:
    the edit is then invisible to every sha256 check."""
    from mobilellm_export import bundle as bundle_mod

    m = bundle_mod.read_manifest(bundle)
    bundle_mod.write_manifest(bundle, **{k: m[k] for k in ("model", "source", "target", "recipe", "config",
                                                            "tokenizer", "generation", "tools")})


def failed_checks(report: dict) -> list[str]:
    return [c["name"] for c in report.get("gate", {}).get("checks", []) if c["status"] == "fail"]


def caught_by(report: dict, clean: dict) -> list[str]:
    """The checks `report` fails that the clean run of the same model and recipe passes: only these
    count as catching a fault (random weights can fail an absolute bound clean)."""
    known = set(failed_checks(clean))
    return [c for c in failed_checks(report) if c not in known]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def run_fault(fault: Fault, clean_report_path: str | Path, workdir: Path, *, source: str | None = None) -> dict:
    """Inject `fault`, run the gate against the clean report, and say what it saw.

    `source` defaults to the model the clean report was made from. Result keys: fault, level,
    severity, recipe, caught, caught_by (failed checks that pass on the clean run), checks_failed
    (all), refused (the gate stopped with a one-line error instead of a report: e.g. verify's
    metadata pre-check), crashed (a traceback or a load error), localise (first diverging point,
    `verify.localise`), seconds. Only `caught` is a catch; refused and crashed are columns apart."""
    clean_report_path = Path(clean_report_path)
    clean = json.loads(clean_report_path.read_text())
    if clean.get("recipe") != fault.recipe:
        raise ValueError(f"{fault.name} corrupts a {fault.recipe} export; {clean_report_path} is of {clean.get('recipe')}")
    clean_bundle = clean_report_path.parent
    source = source or json.loads((clean_bundle / "bundle.json").read_text())["source"]["id"]
    row = {"fault": fault.name, "level": fault.level, "severity": fault.severity, "recipe": fault.recipe,
           "description": fault.description, "caught": False, "caught_by": [], "checks_failed": [],
           "refused": None, "crashed": None, "localise": None, "passed": None}
    t0 = time.perf_counter()
    workdir = Path(workdir)
    stage = "export"
    try:
        if fault.level == "file":
            bundle = workdir / clean_bundle.name
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.copytree(clean_bundle, bundle, ignore=shutil.ignore_patterns("report*"))
            fault.apply(bundle)
            rehash(bundle)
            stage = "gate"
            rep = verify_bundle(bundle, baseline=str(clean_report_path), source=source)
        else:
            _, rep = export_bundle(source, workdir, fault.recipe, target=FaultyAndroid(fault),
                                   baseline=str(clean_report_path))
    except UserError as e:  # the gate stopped in one line before judging: not a report, not a catch
        row["refused"] = f"{stage}: {e}"[:300]
    except Exception as e:  # a crash or a load error: its own column, never a catch
        row["crashed"] = f"{stage}: {_one_line(e)}"
        row["traceback"] = traceback.format_exc(limit=4)[-2000:]
    else:
        row["passed"] = rep.get("passed")
        row["artifact_runs_here"] = rep.get("artifact_runs_here")
        row["checks_failed"] = failed_checks(rep)
        row["caught_by"] = caught_by(rep, clean)
        # caught: a named check failed, on an artifact that loaded and ran here
        row["caught"] = bool(row["caught_by"]) and rep.get("artifact_runs_here", False)
        row["localise"] = (rep.get("localise") or {}).get("first")
        row["messages"] = [c["message"] for c in rep.get("gate", {}).get("checks", [])
                           if c["name"] in row["caught_by"]]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row
