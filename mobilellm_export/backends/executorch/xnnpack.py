"""The `android` target: ExecuTorch's XNNPACK delegate, for the Android `LlmModule` and iOS `TextRunner`.

This class is the target's contract (options, recipe checks, lowering bounds, size model); the
ExecuTorch program itself (module swaps, torch.export, lowering, .pte/.ptd) is `program.py`, imported
only when something is lowered, so listing targets imports no exporter.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from mobilellm_export.backends import Artifact, ExportSpec, Option, Target, release
from mobilellm_export.errors import UserError

if TYPE_CHECKING:
    from mobilellm_export.model import Transformer


def _auto_options(recipe) -> list:
    """The formats a 4bit-auto search may choose (each must lower like the base format)."""
    if recipe.auto is None or recipe.auto.resolved:
        return []
    from mobilellm_export.quant.auto import option_quant

    return [(o, option_quant(recipe.linear, o)) for o in recipe.auto.options]


class Android(Target):
    name = "android"
    runtime = "ExecuTorch (XNNPACK)"
    app = "adb push {bundle} /data/local/tmp/mobilellm/, then pick it in the app (android_demo/README.md)"
    tools = ("executorch",)
    imports = ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch.runtime",
               "executorch.extension.llm.custom_ops.custom_ops", "executorch.kernels.quantized")
    ENTRY, DATA = "model.pte", "model.ptd"  # .ptd: external weights, so a tied table is stored once
    OPTIONS = (Option("weights", ("ptd", "pte"), "ptd",
                      "--target android: where a tied embedding/head's weights go. ptd (default): model.ptd "
                      "beside model.pte, the table stored once; pte: all in model.pte, for a runtime that "
                      "cannot load a .ptd (ExecuTorch's iOS TextRunner), the table stored twice."),)

    def __init__(self, weights: str = "ptd", **options):
        super().__init__(weights=weights, **options)  # an unknown option: one line, from the base class

    def check(self, recipe, spec: ExportSpec) -> list[str]:
        notes = []
        parts = [("linear", recipe.linear), ("head", recipe.head)]
        parts += [(f"[override] {o['match']}", recipe.weight_for(o["match"])) for o in recipe.overrides]
        parts += [(f"[auto] option {o}", w) for o, w in _auto_options(recipe)]
        for part, w in parts:
            if w.quantized and w.activations != "int8_dynamic":
                raise UserError(f"target android cannot honour recipe {recipe.name!r}: [{part}] asks for "
                                f"weight-only int{w.bits} linears; XNNPACK runs quantized linears with int8 "
                                f"dynamic activations only (activations = 'int8_dynamic')")
            if w.quantized and w.group_size % 32:
                raise UserError(f"target android cannot honour recipe {recipe.name!r}: [{part}] group_size "
                                f"{w.group_size}; XNNPACK needs a multiple of 32 (or 0, per channel)")
            if w.quantized and w.group_size and w.scale_dtype != "bf16":
                notes.append(f"[{part}] asks for {w.scale_dtype} block scales; XNNPACK stores 4-bit block "
                             f"scales in bf16, so the artifact rounds them")
        return notes

    def thresholds(self, th, recipe=None):
        """XNNPACK runs the recipe's own arithmetic (int8 per-token activations), so a correct .pte
        sits at the noise floor of that arithmetic measured in the same run, whatever the text
        (SmolLM2 4bit: 0.0258 against a floor of 0.0253 on Botchan, 0.0355 against 0.0332 on
        another English text, where an absolute 0.03 failed it). The bound: KL <= 1.5 x floor +
        0.005, top-1 >= floor - 0.03. The absolute bounds apply where the floor is 0; 8-bit
        linears agree more (0.87 against 0.85)."""
        import dataclasses

        if recipe is None or not any(w.quantized and w.activations == "int8_dynamic" for w in recipe.weights()):
            return th  # float or weight-only: the recipe's own (absolute) bounds
        return dataclasses.replace(th, lowering_kl_floor_factor=1.5, lowering_kl_floor_slack=0.005,
                                   lowering_top1_floor_slack=0.03, lowering_kl_mean=0.03,
                                   lowering_top1_min=0.87 if recipe.linear.bits == 8 else 0.85)

    def overhead_bytes(self, cfg, max_context: int) -> float:
        """The RoPE tables (fp32 cos and sin, [max_context, head_dim] each) and the program. SmolLM2
        4bit at context 2048: 89.81 MB of .pte and .ptd for an 88.27 MB weight estimate, 1.05 MB of
        them the tables."""
        return 2 * max_context * cfg.head_dim * 4 + 0.5e6

    def prepare(self, model: Transformer, spec: ExportSpec) -> Transformer:
        from mobilellm_export.backends.executorch.program import prepare

        return prepare(model)

    def probe(self, prepared: Transformer, spec: ExportSpec, work_dir: Path):
        """The prepared model lowered as `export` lowers it (one .pte, no .ptd: the weights' location
        changes no arithmetic), with the probe outputs and all positions' logits."""
        from mobilellm_export.backends.executorch.program import export_pte
        from mobilellm_export.nn_utils import structural_copy
        from mobilellm_export.runtimes.executorch import ProbeProgram

        model = structural_copy(prepared)  # the flags go on a copy: `prepared` stays as it is
        model.probe, model.full_logits = True, True
        path = Path(work_dir) / "probe.pte"
        export_pte(model, spec.config, path, max_seq_len=spec.max_seq_len, max_context=spec.max_context,
                   eos_ids=spec.eos_ids, bos_id=spec.bos_id)
        return ProbeProgram(path, spec.max_seq_len, spec.threads)

    def export(self, model: Transformer, spec: ExportSpec, out_dir: Path, status=lambda msg: None) -> Artifact:
        from mobilellm_export.backends.executorch.program import export_pte, shares_tied_table

        shared = shares_tied_table(model)
        data = self.DATA if shared and self.options["weights"] == "ptd" else None
        facts = export_pte(model, spec.config, Path(out_dir) / self.ENTRY, max_seq_len=spec.max_seq_len,
                           max_context=spec.max_context, eos_ids=spec.eos_ids, bos_id=spec.bos_id, data_file=data,
                           status=status)
        if shared and not data:  # program constants and delegate data live apart in one .pte
            facts["tied_table_stored"] = "twice (--android-weights pte)"
        manifest = {"data_file": data, "constant_methods": facts["constant_methods"]}
        return Artifact(files=[self.ENTRY] + ([data] if data else []), entry=self.ENTRY, manifest=manifest,
                        facts=facts)

    @staticmethod
    def _data(bundle_dir: Path, manifest: dict) -> Path | None:
        data = manifest["target"].get("data_file")
        return Path(bundle_dir) / data if data else None

    def runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None):
        from mobilellm_export.runtimes.executorch import ExecuTorchRunner

        with _loading(manifest):
            return ExecuTorchRunner(Path(bundle_dir) / manifest["target"]["entry"], threads=threads,
                                    data_path=self._data(bundle_dir, manifest))

    def app_runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None):
        from mobilellm_export.runtimes.executorch import TextRunner

        d = Path(bundle_dir)
        with _loading(manifest):
            return TextRunner(d / manifest["target"]["entry"], d / manifest["tokenizer"]["file"],
                              data_path=self._data(d, manifest), max_context=manifest["generation"]["max_context"],
                              threads=threads)

    def target_section(self, bundle_dir: Path, manifest: dict) -> dict:
        from mobilellm_export.backends.executorch.pte_file import constant_methods

        c = constant_methods(Path(bundle_dir) / self.ENTRY)
        methods = {k: (list(v) if k == "get_eos_ids" else v[0]) for k, v in c.items() if v}
        # export writes a .ptd exactly when the program keeps its weights outside (a tied table)
        data = self.DATA if self.DATA in manifest["files"] else None
        return {"entry": self.ENTRY, "data_file": data, "constant_methods": methods,
                **self.recorded_min_runtime(bundle_dir, manifest)}

    def min_runtime(self, bundle_dir: Path, tools: dict) -> dict | None:
        """The ExecuTorch that wrote the .pte. ExecuTorch promises that a newer runtime loads an
        older .pte (for at least one following minor release), and nothing about the reverse
        (runtime/COMPATIBILITY.md): a .pte may use program-format features, ops or delegate
        payloads an older runtime lacks, and the file names no lower bound of its own."""
        version = release(tools.get("executorch"))
        return {"name": "executorch", "version": version} if version else None

    def metadata(self, bundle_dir: Path, manifest: dict) -> dict:
        from mobilellm_export.backends.executorch.pte_file import constant_methods

        c = constant_methods(Path(bundle_dir) / manifest["target"]["entry"])  # from the file, no runtime
        missing = [k for k in ("get_eos_ids", "get_max_context_len", "get_max_seq_len", "get_vocab_size") if k not in c]
        if missing:
            raise UserError(f"{manifest['target']['entry']} lacks the LLM runner method {missing[0]}")
        return {"eos_ids": [int(x) for x in c["get_eos_ids"]], "max_context": int(c["get_max_context_len"][0]),
                "max_seq_len": int(c["get_max_seq_len"][0]), "vocab_size": int(c["get_vocab_size"][0])}


@contextlib.contextmanager
def _loading(manifest: dict):
    """A program ExecuTorch cannot load (corrupt past what sha256 shows, e.g. a manifest that
    hashes a truncated file) is one line, not a RuntimeError traceback."""
    try:
        yield
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"ExecuTorch cannot load {manifest['target']['entry']}: {first}") from None
