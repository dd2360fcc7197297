"""Decode and prefill speed of our int4 ONNX bundle against ONNX Runtime GenAI's own model builder
(and the Android .pte), on MobileLLM-R1-140M shapes at 2 threads.

Rows (random weights, same shapes: 15 layers, dim 576, 9/3 heads of 64, MLP 2048, tied 128K vocab):

    ours     `mobilellm-export --target onnx --quant 4bit` of preset r1-140m (QK-norm; 4-bit g32
             linears; the 4bit recipe's tied head/embedding is 8-bit per channel), run by
             onnxruntime-genai
    builder  `python -m onnxruntime_genai.models.builder -p int4 -e cpu` (symmetric int4, block 32,
             accuracy level 4) on a plain LlamaForCausalLM checkpoint of the same shapes without
             QK-norm, run by onnxruntime-genai: the speed ORT's own tooling reaches
    ours-h4  the same with `--quant 4bit-fast`: a tied 4-bit g32 head/embedding, the builder's own
             format (the 4bit recipe's 8-bit head buys quality with decode speed on this
             128K-vocabulary model)
    ours-llama  our exporter with `--quant 4bit-fast` on the builder's own input, the plain Llama
             checkpoint below: the same model in the same format, so the ratio to the builder is
             the graphs' alone (R1's QK-norm is a cost the plain Llama does not have)
    pte      `mobilellm-export --target android --quant 4bit` of r1-140m, run by ExecuTorch's C++
             TextLLMRunner (what the Android/iOS apps run)

Both ONNX rows go through the same driver, onnxruntime-genai's Generator: `append_tokens(prompt)`
is the prefill, then `generate_next_token()` steps are the decode. Rates use TextLLMRunner's
definitions, so all rows compare: prefill = prompt tokens / time to the first token; decode =
tokens after the first / their time (each one forward pass). Every row gets the same prompt ids (a
prefix of Botchan in the Llama 3 tokenizer; the .pte gets the text that tokenizes to exactly them)
and decodes the same number of tokens: genai's `min_length` masks EOS, and the .pte row (which
cannot mask EOS) is checked to have run its full length.

Paired, as `benchmarks/paired.py` explains: all runners live in one process, each is warmed up once,
then every round runs each row once in an order rotated every round, and the per-round ratios
ours/builder are the estimate (median and IQR). Acceptance: our decode >= 0.95x the builder's, for
the same model format (ours-h4); the default recipe's ratio is reported beside it.

    python benchmarks/bench_onnx.py [--rounds 7] [--quick] [--work build/bench-onnx] [--rebuild] [--quant 4bit]

Artifacts are cached in --work (the .pte export takes ~12 min; --rebuild redoes all three).
Writes benchmarks/results/bench_onnx.json (--json to change).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from rounding_speed import TOKENIZER, export  # noqa: E402

from mobilellm_export.verify.latency import prompt_prefix, quartiles  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

PRESET, THREADS = "r1-140m", 2
BOTCHAN = REPO.parent / "shared" / "data" / "botchan.txt"
# symmetric int4, block 32, int8 activations: the format of our 4-bit linears. The builder ties the
# embedding to the head by default (shared_embeddings) when config.json says tie_word_embeddings.
BUILDER_OPTIONS = ["block_size=32", "accuracy_level=4", "is_symmetric=true"]
TARGET = 0.95


# ---- artifacts ------------------------------------------------------------------------------------

def bundle(work: Path, target: str, quant: str, rebuild: bool, source: str = PRESET, tag: str = "") -> Path:
    """Our exporter's bundle of `source` for `target` and recipe `quant`, reused from `work` when it is there."""
    out = work / f"{target}-{Path(quant).stem}{tag}"
    found = [p for p in out.glob(f"*-{target}-{Path(quant).stem}") if (p / "bundle.json").is_file()]
    if found and not rebuild:
        return found[0]
    shutil.rmtree(out, ignore_errors=True)
    print(f"exporting {source} --target {target} --quant {quant} into {out} ...", flush=True)
    return export(source, quant, out, str(TOKENIZER), ["--target", target])


def llama_checkpoint(hf: Path, max_context: int) -> None:
    """A LlamaForCausalLM with the preset's shapes and random weights (no QK-norm: plain Llama)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mobilellm_export.presets import PRESETS

    p = PRESETS[PRESET]
    config = LlamaConfig(
        vocab_size=p.vocab_size, hidden_size=p.dim, num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads,
        num_key_value_heads=p.n_kv_heads, head_dim=p.head_dim, intermediate_size=p.hidden_dim,
        rms_norm_eps=p.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta},
        tie_word_embeddings=p.tie_embeddings, max_position_embeddings=max_context,
        bos_token_id=p.bos_token_id, eos_token_id=list(p.eos_token_ids), pad_token_id=p.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(hf, safe_serialization=True)
    for f in TOKENIZER.parent.iterdir():  # the builder copies these into its output for genai
        shutil.copy(f, hf / f.name)


def builder_model(work: Path, max_context: int, rebuild: bool) -> Path:
    """ORT GenAI's model builder output for the plain Llama checkpoint."""
    hf, out = work / "llama-hf", work / "builder"
    if (out / "genai_config.json").is_file() and not rebuild:
        return out
    shutil.rmtree(hf, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"writing a random LlamaForCausalLM into {hf}, then running ORT GenAI's builder ...", flush=True)
    llama_checkpoint(hf, max_context)
    log = work / "builder.log"  # it logs every tensor it quantizes and saves
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                            "-p", "int4", "-e", "cpu", "-c", str(work / "builder-cache"),
                            "--extra_options", *BUILDER_OPTIONS], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"the model builder failed (exit {r.returncode}); see {log}")
    return out


def graph_facts(path: Path) -> tuple[dict[str, int], dict]:
    """(op_type counts, the head's MatMulNBits attributes): the head is ~half the weights at this size."""
    import onnx
    from onnx import helper

    ops: dict[str, int] = {}
    head = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if "logits" in n.output:
            head = {"op": n.op_type, **{a.name: helper.get_attribute_value(a) for a in n.attribute}}
    return dict(sorted(ops.items())), head


def model_bytes(folder: Path, names: list[str]) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.name in names or f.suffix == ".data"}


# ---- runners -------------------------------------------------------------------------------------

class GenAIRow:
    """onnxruntime-genai's Generator on a model folder (genai_config.json), at `threads` intra-op threads."""

    def __init__(self, folder: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)

    def run(self, ids: list[int], n_decode: int) -> dict:
        import numpy as np

        og = self.og
        params = og.GeneratorParams(self.model)
        n = len(ids) + 1 + n_decode  # prompt, the prefill's token, n_decode decoded tokens
        # min_length masks EOS: random weights may pick it, and every row must decode n_decode tokens
        params.set_search_options(max_length=n, min_length=n, do_sample=False)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(ids, np.int32))  # the prefill forward pass
        gen.generate_next_token()  # picks the first token from the prefill's logits (no forward)
        t1 = time.perf_counter()
        steps = 0
        while not gen.is_done():
            gen.generate_next_token()  # one decode forward pass (the previous token), then greedy pick
            steps += 1
        t2 = time.perf_counter()
        return {"prompt_tokens": len(ids), "decode_tokens": steps, "prefill_tok_s": len(ids) / (t1 - t0),
                "decode_tok_s": steps / (t2 - t1)}


class PteRow:
    """ExecuTorch's C++ TextLLMRunner through our wrapper; it tokenizes the prompt text itself."""

    def __init__(self, folder: Path, threads: int, prompt: str):
        from mobilellm_export.runtimes.executorch import TextRunner

        self.app = TextRunner(folder / "model.pte", folder / "tokenizer.json", folder / "model.ptd", threads=threads)
        self.prompt = prompt

    def run(self, ids: list[int], n_decode: int) -> dict:
        s = self.app.generate(self.prompt, n_decode + 1, temperature=0.0, quiet=True)
        if s["prompt_tokens"] != len(ids) or s["generated_tokens"] != n_decode + 1:
            raise RuntimeError(f"pte row ran {s['prompt_tokens']} prompt / {s['generated_tokens']} generated tokens, "
                               f"expected {len(ids)} / {n_decode + 1} (EOS hit?)")
        return {"prompt_tokens": s["prompt_tokens"], "decode_tokens": s["generated_tokens"] - 1,
                "prefill_tok_s": s["prefill_tok_s"], "decode_tok_s": s["decode_tok_s"]}


# ---- measurement -----------------------------------------------------------------------------------

def paired_rounds(runners: dict, ids: list[int], n_decode: int, rounds: int) -> dict[str, list[dict]]:
    for r in runners.values():  # warm-up at the measured shapes: first calls allocate and pack weights
        r.run(ids, n_decode)
    names = list(runners)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rnd in range(rounds):
        for k in range(len(names)):
            name = names[(k + rnd) % len(names)]
            runs[name].append(runners[name].run(ids, n_decode))
        print(f"  round {rnd + 1}/{rounds}: " + ", ".join(f"{n} {runs[n][-1]['decode_tok_s']:.1f}" for n in names),
              flush=True)
    return runs


def summary(runs: dict[str, list[dict]]) -> dict:
    rows = {}
    for name, rs in runs.items():
        row = {"decode_tokens": sorted({r["decode_tokens"] for r in rs}),
               "prompt_tokens": sorted({r["prompt_tokens"] for r in rs})}
        for key in ("decode_tok_s", "prefill_tok_s"):
            q = quartiles([r[key] for r in rs])
            row[key], row[key + "_iqr"], row[key + "_runs"] = q["median"], [q["q1"], q["q3"]], [r[key] for r in rs]
        rows[name] = row
    ratios = {}
    for mine, other in (("ours", "builder"), ("ours-h4", "builder"), ("ours-llama", "builder"), ("ours", "pte")):
        for key in ("decode_tok_s", "prefill_tok_s"):
            q = quartiles([a[key] / b[key] for a, b in zip(runs[mine], runs[other])])
            ratios[f"{mine}/{other} {key.split('_')[0]}"] = {"median": q["median"], "iqr": [q["q1"], q["q3"]]}
    return {"rows": rows, "paired_ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--quant", default="4bit", help="our recipe for the ours and pte rows (name or .toml)")
    ap.add_argument("--quant-h4", default="4bit-fast", help="our recipe for the ours-h4 row (a 4-bit head)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 16 prompt, 8 decode tokens")
    ap.add_argument("--work", default=str(REPO / "build" / "bench-onnx"), help="cached artifacts")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached artifacts")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "bench_onnx.json"))
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.prompt_len, a.decode_tokens = 2, 16, 8
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    ours = bundle(work, "onnx", a.quant, a.rebuild)
    ours_h4 = bundle(work, "onnx", a.quant_h4, a.rebuild)
    max_context = json.loads((ours / "bundle.json").read_text())["generation"]["max_context"]
    builder = builder_model(work, max_context, a.rebuild)
    ours_llama = bundle(work, "onnx", a.quant_h4, a.rebuild, source=str(work / "llama-hf"), tag="-llama")
    pte = bundle(work, "android", a.quant, a.rebuild)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    text = BOTCHAN.read_text(encoding="utf-8")
    text = text[text.index("CHAPTER I"):]  # the novel, not the Gutenberg header
    prompt = prompt_prefix(tok, text, a.prompt_len)
    ids = tok.encode(prompt, add_special_tokens=False).ids

    runners = {"ours": GenAIRow(ours, THREADS), "ours-h4": GenAIRow(ours_h4, THREADS),
               "ours-llama": GenAIRow(ours_llama, THREADS),
               "builder": GenAIRow(builder, THREADS),
               "pte": PteRow(pte, THREADS, prompt)}
    print(f"{a.rounds} paired rounds, {len(ids)} prompt tokens, {a.decode_tokens} decoded, {THREADS} threads:",
          flush=True)
    res = summary(paired_rounds(runners, ids, a.decode_tokens, a.rounds))

    facts = {"ours": graph_facts(ours / "model.onnx"), "ours-h4": graph_facts(ours_h4 / "model.onnx"),
             "ours-llama": graph_facts(ours_llama / "model.onnx"),
             "builder": graph_facts(builder / "model.onnx")}
    ops = {k: v[0] for k, v in facts.items()}
    sizes = {"ours": model_bytes(ours, ["model.onnx"]), "ours-h4": model_bytes(ours_h4, ["model.onnx"]),
             "ours-llama": model_bytes(ours_llama, ["model.onnx"]), "builder": model_bytes(builder, ["model.onnx"]),
             "pte": model_bytes(pte, ["model.pte", "model.ptd"])}
    decode_ratio = res["paired_ratios"]["ours-h4/builder decode"]["median"]
    res.update({
        "preset": PRESET, "quant": a.quant, "quant_h4": a.quant_h4, "threads": THREADS, "rounds": a.rounds, "order": "rotated each round",
        "prompt_tokens": len(ids), "decode_tokens": a.decode_tokens, "prompt_ids": ids,
        "drivers": {"ours": "onnxruntime-genai Generator", "ours-h4": "onnxruntime-genai Generator",
                    "ours-llama": "onnxruntime-genai Generator", "builder": "onnxruntime-genai Generator",
                    "pte": "ExecuTorch TextLLMRunner (mobilellm_export.runtimes.executorch.TextRunner)"},
        "artifacts": {"ours": str(ours), "ours-h4": str(ours_h4), "ours-llama": str(ours_llama), "builder": str(builder), "pte": str(pte)},
        "builder_command": ["-p", "int4", "-e", "cpu", "--extra_options", *BUILDER_OPTIONS],
        "builder_checkpoint": f"LlamaForCausalLM, random weights, {PRESET} shapes, no QK-norm, "
                              f"max_position_embeddings={max_context}",
        "model_bytes": sizes, "op_counts": ops, "lm_head": {k: v[1] for k, v in facts.items()},
        "target": {"ours-h4/builder decode >=": TARGET, "met": decode_ratio >= TARGET},
    })

    print(f"\n{'row':10s} {'decode tok/s [IQR]':>24s} {'prefill tok/s [IQR]':>26s} {'model MB':>9s}")
    for name, row in res["rows"].items():
        d, p = row["decode_tok_s_iqr"], row["prefill_tok_s_iqr"]
        mb = sum(sizes[name].values()) / 1e6
        print(f"{name:10s} {row['decode_tok_s']:7.1f} [{d[0]:6.1f}-{d[1]:6.1f}] "
              f"{row['prefill_tok_s']:9.1f} [{p[0]:6.1f}-{p[1]:6.1f}] {mb:9.1f}")
    print("\npaired ratios (median [IQR] over rounds):")
    for k, v in res["paired_ratios"].items():
        print(f"  {k:24s} {v['median']:.3f} [{v['iqr'][0]:.3f}-{v['iqr'][1]:.3f}]")
    print(f"\nours-h4 decode >= {TARGET}x builder (same format): {'yes' if res['target']['met'] else 'NO'} "
          f"({decode_ratio:.3f})")
    diff = {k: (ops['ours'].get(k, 0), ops['builder'].get(k, 0)) for k in sorted(set(ops['ours']) | set(ops['builder']))
            if ops['ours'].get(k, 0) != ops['builder'].get(k, 0)}
    print("op counts that differ (ours, builder):", diff)
    print("lm_head (ours, builder):", *(f"{v[1].get('bits')}-bit block {v[1].get('block_size')}" for v in facts.values()))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({**res, "provenance": stamp()}, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
