"""The `onnx` target: the hand-written int4 graph (graph.py) for ONNX Runtime and onnxruntime-genai
(package.py), run here by runtimes/onnxruntime.py. This class is the target's contract; the graph
builder is imported only when something is lowered."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mobilellm_export.backends import Artifact, ExportSpec, Option, Target, release
from mobilellm_export.backends.onnxruntime import ACCURACY, DATA, MODEL
from mobilellm_export.errors import UserError

if TYPE_CHECKING:
    from mobilellm_export.model import Transformer



class Onnx(Target):
    name = "onnx"
    runtime = "ONNX Runtime (CPU EP)"
    app = "onnxruntime-genai opens the folder: og.Model(og.Config(\"{bundle}\")) (docs/targets/onnx.md)"
    tools = ("onnx", "onnxruntime")
    imports = ("onnx", "onnxruntime")

    OPTIONS = (Option("accuracy", ("int8", "fp32"), "int8",
                      "--target onnx: MatMulNBits compute, int8 activations (accuracy level 4, ORT's fast CPU "
                      "path; the default) or fp32 (level 1)."),
               Option("ort", ("off", "on"), "off",
                      "--target onnx: also write model.ort (ORT format, for ORT Mobile reduced builds) and its "
                      "required-operators config."))

    def __init__(self, accuracy: str = "int8", ort: str = "off", **options):
        # `Onnx("fp32")`, as tests write it; an unknown option is still Target's one-line error
        super().__init__(accuracy=accuracy, ort=ort, **options)

    @property
    def accuracy(self) -> str:
        return self._options["accuracy"]

    @property
    def localise_tolerance(self) -> float:
        """Level 4 rounds every MatMul's input to int8 per block of 32, which the weight-only reference
        does not: a correct op is then ~1e-2 from it (tiny models), so the localiser's bound is 3e-2."""
        return 3e-2 if self.accuracy == "int8" else 2e-3

    @property
    def ort(self) -> str:
        return self._options["ort"]

    def thresholds(self, th, recipe=None):
        """Lowering bounds against the weight-only reference. Level 1 computes what the reference
        computes, to fp32 rounding. Level 4 quantizes activations to int8 per block of 32 along K:
        neither that reference nor 8da4w, so it has its own absolute bound (not the int8 noise floor,
        which measures per-token activation noise)."""
        import dataclasses

        kl, top1 = (1e-4, 0.99) if self.accuracy == "fp32" else (0.03, 0.85)
        return dataclasses.replace(  # tighter than the recipe's, never looser (an fp32 recipe keeps its own)
            th, lowering_kl_floor_factor=None, lowering_top1_floor_slack=None,
            lowering_kl_mean=min(kl, th.lowering_kl_mean), lowering_top1_min=max(top1, th.lowering_top1_min),
            lowering_max_abs_logit_rel=1e-3 if self.accuracy == "fp32" else th.lowering_max_abs_logit_rel)

    def check(self, recipe, spec: ExportSpec) -> list[str]:
        cfg = spec.config
        if cfg.attn_temperature_tuning and any(not cfg.uses_rope(i) for i in range(cfg.n_layers)):
            raise UserError("target onnx: Llama-4 NoPE-layer attention temperature tuning is not implemented")
        if cfg.head_dim % 16:  # the export writes it; ORT 1.31 refuses it only when the first token runs
            raise UserError(f"target onnx: head_dim {cfg.head_dim}; ONNX Runtime's GroupQueryAttention needs a "
                            f"multiple of 16")
        notes = []
        parts = [("linear", recipe.linear), ("head", recipe.head)]
        parts += [(f"[override] {o['match']}", recipe.weight_for(o["match"])) for o in recipe.overrides]
        for part, w in parts:
            if w.quantized and w.group_size and (w.group_size < 16 or w.group_size & (w.group_size - 1)):
                raise UserError(f"target onnx cannot honour recipe {recipe.name!r}: [{part}] group_size "
                                f"{w.group_size}; MatMulNBits needs a power of two >= 16 (or 0, per channel)")
        if any(w.quantized and w.activations == "int8_dynamic" for _, w in parts):
            level = ("int8 activations per block of K (accuracy level 4)" if self.accuracy == "int8"
                     else "float activations (accuracy level 1)")
            notes.append(f"the recipe's int8 per-token dynamic activations become MatMulNBits with {level}; the "
                         f"lowering is measured against the same integers with float activations")
        return notes

    def reference(self, quantized_model: Transformer) -> Transformer:
        from mobilellm_export.quant.simulate import weight_only_reference

        return weight_only_reference(quantized_model)

    def export(self, model: Transformer, spec: ExportSpec, out_dir: Path, status=lambda msg: None) -> Artifact:
        from mobilellm_export.backends.onnxruntime.graph import export_onnx
        from mobilellm_export.backends.onnxruntime.package import genai_config, to_ort_format

        facts = export_onnx(model, spec, out_dir, self.accuracy, status)
        cfg = genai_config(spec, len(model.schedule), spec.config.pad_token_id)
        (Path(out_dir) / "genai_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        manifest = {"data_file": DATA, "accuracy": self.accuracy, "accuracy_level": ACCURACY[self.accuracy],
                    "genai_config": "genai_config.json"}
        files = [MODEL, DATA, "genai_config.json"]
        if self.ort == "on":
            status("converting to the ORT format")
            files += to_ort_format(Path(out_dir), facts)
        return Artifact(files=files, entry=MODEL, manifest=manifest, facts=facts)

    def probe(self, prepared: Transformer, spec: ExportSpec, work_dir: Path):
        """The graph `export` writes (same builder, same accuracy level), with the residual stream
        after the embedding and every attention and MLP application as extra outputs (values the
        graph computes anyway), run in ONNX Runtime as the runner runs the artifact. All positions'
        logits: the graph always returns them."""
        from mobilellm_export.backends.onnxruntime.graph import export_onnx
        from mobilellm_export.runtimes.onnxruntime import OnnxProbe

        work_dir = Path(work_dir)
        facts = export_onnx(prepared, spec, work_dir, self.accuracy, probe=True)
        cfg = {"n_kv_heads": spec.config.n_kv_heads, "head_dim": spec.config.head_dim}
        return OnnxProbe(work_dir / MODEL, facts["probe_outputs"], threads=spec.threads, max_seq_len=spec.max_seq_len,
                         max_context=spec.max_context, cfg=cfg)

    def runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None):
        from mobilellm_export.runtimes.onnxruntime import OnnxRunner

        gen = manifest["generation"]
        _graph(bundle_dir, manifest)  # its external data inside the bundle, before ORT follows it
        with _loading(manifest):
            return OnnxRunner(Path(bundle_dir) / manifest["target"]["entry"], threads=threads,
                              max_seq_len=gen["max_seq_len"], max_context=gen["max_context"],
                              cfg=manifest["config"])

    def app_runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None):
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError:
            return None
        from mobilellm_export.runtimes.onnxruntime import GenAIRunner

        _graph(bundle_dir, manifest)
        bad = next((c for c in self.file_checks(bundle_dir, manifest) if not c["ok"]), None)
        if bad is not None:  # genai_config.json names the graph it loads
            raise UserError(bad["message"])
        with _loading(manifest):
            return GenAIRunner(Path(bundle_dir), manifest, threads)

    def metadata(self, bundle_dir: Path, manifest: dict) -> dict:
        path = Path(bundle_dir) / manifest["target"]["entry"]
        props = {p.key: p.value for p in _graph(bundle_dir, manifest).metadata_props}
        missing = [k for k in ("eos_ids", "max_context", "max_seq_len", "vocab_size") if k not in props]
        if missing:
            raise UserError(f"{path.name} lacks the metadata entry {missing[0]}")
        try:
            out = {"eos_ids": json.loads(props["eos_ids"]), "max_context": int(props["max_context"]),
                   "max_seq_len": int(props["max_seq_len"]), "vocab_size": int(props["vocab_size"])}
        except ValueError:
            out = None
        if out is None or not (isinstance(out["eos_ids"], list) and all(type(i) is int for i in out["eos_ids"])):
            raise UserError(f"{path.name}'s metadata is malformed (eos_ids {props['eos_ids'][:40]!r})")
        return out

    def target_section(self, bundle_dir: Path, manifest: dict) -> dict:
        return {"entry": MODEL, "data_file": DATA, "accuracy": self.accuracy, "accuracy_level": ACCURACY[self.accuracy],
                "genai_config": "genai_config.json", **self.recorded_min_runtime(bundle_dir, manifest)}

    def min_runtime(self, bundle_dir: Path, tools: dict) -> dict | None:
        """The ONNX Runtime the bundle was exported and verified with. ORT's compatibility table
        bounds only the default-domain opset and IR version (ours: 21 and 10); the graph's
        com.microsoft ops (MatMulNBits, GroupQueryAttention, GatherBlockQuantized, BranchwiseRMSNorm,
        ...) all sit in that domain's opset 1, which names no release, and BranchwiseRMSNorm alone
        needs 1.31. So the file gives no sound lower bound, and the version that loaded it stands."""
        version = release(tools.get("onnxruntime"))
        return {"name": "onnxruntime", "version": version} if version else None

    def file_checks(self, bundle_dir: Path, manifest: dict) -> list[dict]:
        """genai_config.json, which onnxruntime-genai apps read instead of bundle.json (EOS, BOS, context,
        the graph's file and shapes), re-derived from bundle.json's values as `export` writes it; verify
        checks those against the artifact itself."""
        import types

        from mobilellm_export.backends.onnxruntime.package import genai_config
        from mobilellm_export.errors import load_json, same_json

        name = manifest["target"].get("genai_config")
        if name is None:  # a bundle without one has nothing an app could misread
            return []
        if name != "genai_config.json":
            return [{"name": "genai_config.json", "ok": False, "manifest": name, "derived": "genai_config.json",
                     "source": "bundle.json", "message": f"bundle.json names {str(name)[:60]!r} as genai_config.json"}]
        cfg, gen = manifest["config"], manifest["generation"]
        spec = ExportSpec(config=types.SimpleNamespace(**cfg), max_context=gen["max_context"], max_seq_len=gen["max_seq_len"],
                          eos_ids=tuple(gen["eos_ids"]), bos_id=gen["bos"]["id"], threads=1)
        n_caches = cfg["n_layers"] * (2 if cfg.get("layer_sharing") else 1)
        want = _flat(genai_config(spec, n_caches, cfg.get("pad_token_id")))
        got = _flat(load_json(Path(bundle_dir) / name, name, 1 << 20))
        threads = "model.decoder.session_options.intra_op_num_threads"  # the export's --threads: a setting
        want.pop(threads, None)
        got.pop(threads, None)
        bad = sorted(k for k in want.keys() | got.keys() if not same_json(want.get(k, "(absent)"), got.get(k, "(absent)")))
        first = bad[0] if bad else None
        return [{"name": "genai_config.json", "ok": not bad, "manifest": want.get(first) if bad else None,
                 "derived": got.get(first, "(absent)") if bad else None, "source": name,
                 "message": f"{name} says {first} = {str(got.get(first, '(absent)'))[:60]}, but the bundle's "
                            f"model and generation settings give {str(want.get(first, '(absent)'))[:60]}"
                 if bad else ""}]


def _flat(d, prefix: str = "") -> dict:
    """{"a.b.c": leaf} of nested dicts (lists are leaves)."""
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else ()):
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _graph(bundle_dir: Path, manifest: dict):
    """The graph's protobuf (weights not loaded), with every external-data location checked to be the
    bundle's own data file: ONNX Runtime would read any path a tensor names."""
    import onnx

    path = Path(bundle_dir) / manifest["target"]["entry"]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a protobuf that does not parse
        raise UserError(f"{path.name} is not a readable ONNX model: {str(e).splitlines()[0] if str(e) else e}") from None
    data = manifest["target"].get("data_file")
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            where = next((e.value for e in t.external_data if e.key == "location"), None)
            if where != data:
                raise UserError(f"{path.name}: tensor {t.name[:40]!r} reads its data from {str(where)[:80]!r}, "
                                f"not the bundle's {data}")
    return model


@contextlib.contextmanager
def _loading(manifest: dict):
    """A model ONNX Runtime cannot load (corrupt past what sha256 shows, e.g. a manifest that hashes a
    truncated data file) is one line, not a traceback."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"ONNX Runtime cannot load {manifest['target']['entry']}: {first}"[:400]) from None
