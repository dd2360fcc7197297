"""The `ios` target: a stateful Core ML `.mlpackage` (convert.py), run here by our MIL executor.

This class is the target's contract (options, recipe checks, lowering bounds); the conversion is
imported only when something is lowered.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mobilellm_export.backends import Artifact, ExportSpec, Option, Target
from mobilellm_export.backends.coreml import ENTRY, QRANGE
from mobilellm_export.errors import UserError

if TYPE_CHECKING:
    from mobilellm_export.model import Transformer



class IOS(Target):
    name = "ios"
    runtime = "Core ML (iOS 18 ML program, stateful)"
    app = "copy {bundle} into the app's Documents (Finder or xcrun devicectl; ios_demo/README.md)"
    tools = ("coremltools",)
    imports = ("coremltools", "coremltools.converters.mil.frontend.milproto.load")
    precision = "fp16"  # Core ML stores fp16 constants and computes fp16 activations on the device
    OPTIONS = (Option("compute_units", ("gpu", "ane"), "gpu",
                      "--target ios: the compute units the package asks for: gpu (cpuAndGPU) or ane "
                      "(cpuAndNeuralEngine; state dims padded to multiples of 32; pair it with --quant "
                      "4bit-ane, per-channel weights the Neural Engine runs well)."),)

    def __init__(self, compute_units: str = "gpu"):
        super().__init__(compute_units=compute_units)
        self.ane = compute_units == "ane"

    @classmethod
    def from_manifest(cls, target: dict) -> IOS:
        """Bundles written before compute units were an option recorded them only in the package's
        own field (their recipe name chose them)."""
        if "options" not in target and target.get("compute_units") == "cpuAndNeuralEngine":
            return cls(compute_units="ane")
        return super().from_manifest(target)

    def check(self, recipe, spec: ExportSpec) -> list[str]:
        notes = []
        parts = [("linear", recipe.linear), ("head", recipe.head), ("embedding", recipe.embedding)]
        parts += [(f"[override] {o['match']}", recipe.weight_for(o["match"])) for o in recipe.overrides]
        for part, w in parts:
            if w.quantized and w.bits not in QRANGE:
                raise UserError(f"target ios cannot honour recipe {recipe.name!r}: [{part}] bits {w.bits}; "
                                f"Core ML constexpr weights here are int4 or int8")
        if any(w.quantized and w.activations == "int8_dynamic" for _, w in parts[:2] + parts[3:]):
            notes.append("Core ML runs the recipe's int4/int8 weights with fp16 activations (int8 dynamic "
                         "activations need calibration on a Mac): the lowering is measured against the same "
                         "integers with float activations and scales rounded to fp16")
        if any(w.quantized and w.scale_dtype == "bf16" for _, w in parts):
            notes.append("bf16 block scales are stored as fp16 (exact unless below 6.1e-5; counted in the export facts)")
        if self.ane:
            notes.append("compute units cpuAndNeuralEngine, state dims padded to multiples of 32; "
                         "stateful models may fall back to CPU on the Neural Engine (coremltools #2553/#2600)")
        return notes

    def thresholds(self, th, recipe=None):
        """On Linux the runner is the MIL executor in fp32 mode: it computes what the reference computes up
        to rounding, so the lowering bounds are tight (fp16 effects: benchmarks/bench_ios.py). On macOS
        the runner is Core ML itself, in fp16: the issue's fp16 bounds (mean KL 0.01, top-1 0.95)."""
        import platform

        if platform.system() == "Darwin":
            return dataclasses.replace(th, lowering_kl_floor_factor=None, lowering_top1_floor_slack=None,
                                       lowering_kl_mean=0.01, lowering_top1_min=0.95)
        return dataclasses.replace(
            th, lowering_kl_floor_factor=None, lowering_top1_floor_slack=None,
            lowering_kl_mean=min(1e-3, th.lowering_kl_mean), lowering_top1_min=max(0.98, th.lowering_top1_min),
            # 2e-3, not 1e-3: a tiny Gemma 3 with perturbed sandwich norms measures 1.65e-3 (the
            # conformance suite); the reference does not round every constant as the package does.
            lowering_max_abs_logit_rel=2e-3)

    def reference(self, quantized_model: Transformer) -> Transformer:
        from mobilellm_export.backends.coreml.convert import fp16_reference

        return fp16_reference(quantized_model)

    def prepare(self, model: Transformer, spec: ExportSpec):
        from mobilellm_export.backends.coreml.convert import prepare

        return prepare(model, pad_to=32 if self.ane else 1)

    def export(self, model, spec: ExportSpec, out_dir: Path, status=lambda msg: None) -> Artifact:
        from mobilellm_export.backends.coreml.convert import StatefulDecoder, export_mlpackage, prepare, scale_facts

        if not isinstance(model, StatefulDecoder):
            model = prepare(model, pad_to=32 if self.ane else 1)
        facts = scale_facts(model.model)
        facts.update(export_mlpackage(model, spec, Path(out_dir) / ENTRY,
                                      compute_units="cpuAndNeuralEngine" if self.ane else "cpuAndGPU", status=status))
        root = Path(out_dir) / ENTRY
        files = sorted(str(p.relative_to(out_dir)) for p in root.rglob("*") if p.is_file())
        return Artifact(files=files, entry=ENTRY, manifest=self._section(facts["state_shape"]), facts=facts)

    def _section(self, state_shape: list[int]) -> dict:
        return {"minimum_ios": "18.0", "compute_units": "cpuAndNeuralEngine" if self.ane else "cpuAndGPU",
                "inputs": ["inputIds", "causalMask"], "outputs": ["logits"], "states": ["keyCache", "valueCache"],
                "state_shape": state_shape, "weights": "int4/int8 constexpr_blockwise_shift_scale, fp16 scales",
                "activations": "fp16"}

    def target_section(self, bundle_dir: Path, manifest: dict) -> dict:
        from mobilellm_export.runtimes.mil import read_spec

        states = read_spec(Path(bundle_dir) / ENTRY).description.state
        shape = list(states[0].type.stateType.arrayType.shape) if len(states) else None
        return {"entry": ENTRY, **self._section(shape), **self.recorded_min_runtime(bundle_dir, manifest)}

    def min_runtime(self, bundle_dir: Path, tools: dict) -> dict | None:
        """The deployment target the package's spec version needs, as coremltools names it (spec 9:
        iOS18, which macOS 15 also runs): Core ML ships with the OS, so the OS is the runtime."""
        import coremltools as ct

        from mobilellm_export.runtimes.mil import read_spec

        version = read_spec(Path(bundle_dir) / ENTRY).specificationVersion
        try:
            return {"name": "coreml", "version": ct.target(version).name}
        except ValueError:  # a spec version this coremltools has no target for
            return None

    def probe(self, prepared, spec: ExportSpec, work_dir: Path):
        """The prepared decoder converted as `export` converts it (same compute units, fp16
        program), with the residual stream as extra outputs (hidden_N), run by the MIL executor
        in fp32 mode (what the runner runs on Linux; on macOS the runner is Core ML in fp16, which
        this program is not compared with)."""
        from mobilellm_export.backends.coreml.convert import StatefulDecoder, export_mlpackage, prepare, probe_copy
        from mobilellm_export.runtimes.coreml import MILProbe

        if not isinstance(prepared, StatefulDecoder):  # as export: a bare Transformer is prepared first
            prepared = prepare(prepared, pad_to=32 if self.ane else 1)
        path = Path(work_dir) / ENTRY
        export_mlpackage(probe_copy(prepared), spec, path,
                         compute_units="cpuAndNeuralEngine" if self.ane else "cpuAndGPU")
        return MILProbe(path, spec.max_seq_len, spec.max_context)

    def runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None):
        from mobilellm_export.runtimes.coreml import coreml_runner

        gen = manifest["generation"]
        return coreml_runner(Path(bundle_dir) / manifest["target"]["entry"], max_seq_len=gen["max_seq_len"],
                             max_context=gen["max_context"])

    def copy_prepared(self, prepared):
        from mobilellm_export.backends.coreml.convert import decoder_copy

        return decoder_copy(prepared)

    def device_runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None):
        """The package in our MIL executor with every op rounded to fp16, as Core ML computes it on
        a device (runner() runs the same program in fp32)."""
        from mobilellm_export.runtimes.coreml import MILRunner

        gen = manifest["generation"]
        return MILRunner(Path(bundle_dir) / manifest["target"]["entry"], gen["max_seq_len"], gen["max_context"],
                         mode="fp16")

    def metadata(self, bundle_dir: Path, manifest: dict) -> dict:
        from mobilellm_export.runtimes.coreml import package_metadata

        meta = package_metadata(Path(bundle_dir) / manifest["target"]["entry"])
        missing = [k for k in ("eos_ids", "max_context", "max_seq_len", "vocab_size") if k not in meta]
        if missing:
            raise UserError(f"{manifest['target']['entry']} lacks the metadata entry {missing[0]}")
        return {"eos_ids": json.loads(meta["eos_ids"]), "max_context": int(meta["max_context"]),
                "max_seq_len": int(meta["max_seq_len"]), "vocab_size": int(meta["vocab_size"])}
