"""A test backend: the "runtime" is eager PyTorch over a safetensors file of dense weights.

It lowers like a weight-only runtime (the quantized integers times their scales, float activations),
records its own metadata, and can probe itself, so it exercises every part of the Target contract
that the conformance suite checks, with nothing of the project edited to add it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mobilellm_export.backends import Artifact, Target


def dense_state_dict(model) -> tuple[dict, bool]:
    """Every weight of a (weight-only reference) Transformer as a plain float tensor; and whether the
    embedding and the head still share one matrix."""
    from mobilellm_export.quant.quantize import TiedQuantEmbedding
    from mobilellm_export.quant.simulate import DequantLinear, dequant, quantized

    sd = {}
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, (TiedQuantEmbedding, DequantLinear)):
            q = quantized(mod.weight)
            sd[prefix + "weight"] = (dequant(q[0], q[1]) if q is not None else mod.weight).float().contiguous()
            if getattr(mod, "bias", None) is not None:
                sd[prefix + "bias"] = mod.bias.detach().float().contiguous()
            continue
        for pname, p in mod.named_parameters(recurse=False):
            q = quantized(p)
            sd[prefix + pname] = (dequant(q[0], q[1]) if q is not None else p.detach()).float().contiguous()
    tied = model.cfg.tie_embeddings and ("lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"],
                                                                                   sd["embed_tokens.weight"]))
    if tied:
        sd.pop("lm_head.weight", None)
    return sd, tied


class FakeEager(Target):
    name = "fake-eager"
    runtime = "eager PyTorch over safetensors (a test backend)"
    tools = ("safetensors",)
    ENTRY, META = "weights.safetensors", "fake.json"

    def check(self, recipe, spec):
        if any(w.quantized and w.activations == "int8_dynamic" for w in recipe.weights()):
            return ["int8 dynamic activations run as float activations (weight-only)"]
        return []

    def thresholds(self, th, recipe=None):
        """Its arithmetic is the weight-only reference's, op for op, in fp32: the bounds of an exact
        runtime, tighter than any recipe's."""
        import dataclasses

        return dataclasses.replace(th, lowering_kl_floor_factor=None, lowering_top1_floor_slack=None,
                                   lowering_kl_mean=1e-6, lowering_top1_min=0.999, lowering_max_abs_logit_rel=1e-4)

    def reference(self, quantized):
        from mobilellm_export.quant.simulate import weight_only_reference

        return weight_only_reference(quantized)

    def export(self, model, spec, out_dir, status=lambda msg: None):
        import dataclasses

        from safetensors.torch import save_file

        sd, tied = self._weights(model)
        save_file(sd, str(Path(out_dir) / self.ENTRY))
        cfg = dataclasses.replace(model.cfg, tie_embeddings=tied)
        meta = {"config": cfg.to_dict(), "eos_ids": list(spec.eos_ids), "max_context": spec.max_context,
                "max_seq_len": spec.max_seq_len, "vocab_size": cfg.vocab_size}
        (Path(out_dir) / self.META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return Artifact(files=[self.ENTRY, self.META], entry=self.ENTRY, manifest={"meta": self.META},
                        facts={"tensors": len(sd)})

    def _weights(self, model):
        return dense_state_dict(model)

    def _model(self, bundle_dir: Path, entry: str, meta: str):
        from safetensors.torch import load_file

        from mobilellm_export.config import ModelConfig
        from mobilellm_export.model import Transformer

        m = json.loads((Path(bundle_dir) / meta).read_text())
        cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in m["config"].items()})
        return Transformer.from_weights(cfg, load_file(str(Path(bundle_dir) / entry)), m["max_context"]), m

    def runner(self, bundle_dir, manifest, threads=None):
        from mobilellm_export.runtimes.eager import EagerRunner

        model, m = self._model(bundle_dir, manifest["target"]["entry"], manifest["target"]["meta"])
        return EagerRunner(model, "artifact", max_seq_len=m["max_seq_len"])

    def metadata(self, bundle_dir, manifest):
        m = json.loads((Path(bundle_dir) / manifest["target"]["meta"]).read_text())
        return {k: m[k] for k in ("eos_ids", "max_context", "max_seq_len", "vocab_size")}

    def probe(self, prepared, spec, work_dir):
        self.export(prepared, spec, Path(work_dir))
        model, _ = self._model(work_dir, self.ENTRY, self.META)
        model.probe, model.full_logits = True, True

        def run(tokens):
            hidden, logits = [], []
            with torch.inference_mode():
                for i in range(0, len(tokens), spec.max_seq_len):
                    lg, h = model(torch.tensor([tokens[i:i + spec.max_seq_len]]), torch.tensor([i]))
                    hidden.append(h[:, 0].float())
                    logits.append(lg[0].float())
            return torch.cat(hidden, 1), torch.cat(logits)
        return run
