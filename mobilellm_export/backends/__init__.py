"""Targets: one module per runtime, the only place that imports its backend, plus one runner.

The pipeline, the bundle, verification and the CLI know a target only through `Target` and the
registry below, so a new runtime is one new file here (and one in `runners/`):

    check(recipe, spec)        UserError before any work if the recipe cannot be honoured;
                               returns notes for the report where the target reinterprets it
    reference(quantized)       the eager model this artifact must match (it may be `quantized` itself)
    prepare(model, spec)       module swaps (own KV cache, attention, norms); still runs eagerly;
                               works on a structural copy, so the reference stays untouched
    export(model, spec, dir)   writes the artifact files into the bundle folder -> Artifact
    runner(bundle, manifest)   a Runner over the artifact, or None where the runtime cannot run here
    app_runner(bundle, ...)    the runtime's own text-in/text-out loop (what the apps wrap), or None:
                               `run` and the app-side latency use it
    metadata(bundle, manifest) EOS ids, context and vocabulary as the artifact file records them
    probe(prepared, spec, dir) a function running tokens through the prepared model lowered as the
                               artifact is, with `Transformer.probe` on: (hidden states, logits)
                               per position, for `verify.localise`; None where it cannot

Registered targets: `TARGETS` (name -> "module:Class"), `register()` at run time, and the
`mobilellm_export.backends` entry-point group for targets that live in other packages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from mobilellm_export.errors import UserError

if TYPE_CHECKING:
    import torch

    from mobilellm_export.config import ModelConfig
    from mobilellm_export.model import Transformer
    from mobilellm_export.quant.recipe import Recipe, Thresholds
    from mobilellm_export.runtimes import AppRunner, Runner


# Target.probe's result: token ids -> (hidden states [P, S, D], logits [S, vocab]), both fp32
Probe = Callable[[list[int]], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class ExportSpec:
    """What every target needs to know, decided once by the pipeline."""
    config: ModelConfig
    max_context: int
    max_seq_len: int
    eos_ids: tuple[int, ...]
    bos_id: int | None
    threads: int = 2


@dataclass
class Artifact:
    """What `Target.export` wrote into the bundle folder."""
    files: list[str]  # relative paths of every file written (a folder artifact lists its files)
    entry: str  # the file or folder runners and apps open
    manifest: dict = field(default_factory=dict)  # -> bundle.json["target"] (data file, runtime facts)
    facts: dict = field(default_factory=dict)  # -> report["export"] (timings, delegate / op counts)


class Target:
    """Base class with the defaults; a target overrides what it needs (see the module docstring)."""
    name: ClassVar[str]
    runtime: ClassVar[str]  # human name of the runtime, for reports
    tools: ClassVar[tuple[str, ...]] = ()  # pip packages whose versions the bundle records

    def __init__(self, **options):
        if options:  # a target with options (e.g. onnx's accuracy) overrides __init__
            raise UserError(f"target {self.name} takes no option {sorted(options)[0]!r}")

    @property
    def options(self) -> dict:
        """The options this target was built with, recorded in bundle.json (target.options)."""
        return {}

    def check(self, recipe: Recipe, spec: ExportSpec) -> list[str]:
        return []

    def thresholds(self, th: Thresholds, recipe: Recipe | None = None) -> Thresholds:
        """The recipe's thresholds with this target's own lowering bounds: what its runtime's
        arithmetic allows for `recipe`. This class is their one owner (recipes name no target);
        `--threshold` overrides still win (verify/thresholds.py)."""
        return th

    def reference(self, quantized: Transformer) -> Transformer:
        return quantized

    def prepare(self, model: Transformer, spec: ExportSpec) -> Transformer:
        return model

    def export(self, model: Transformer, spec: ExportSpec, out_dir: Path,
               status: Callable[[str], None] = lambda msg: None) -> Artifact:
        raise NotImplementedError

    def runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None) -> Runner | None:
        return None

    def app_runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None) -> AppRunner | None:
        return None

    def probe(self, prepared: Transformer, spec: ExportSpec, work_dir: Path) -> Probe | None:
        """Lower `prepared` (the output of `prepare`) with `probe = True` and full logits, as
        `export` lowers it, into work_dir; return fn(tokens) -> (hidden [P, S, D], logits [S, vocab])
        for the positions 0..S-1 of `tokens` (P: `prepared.probe_names()`), from fresh caches.
        None: this target cannot say where its artifact diverges."""
        return None

    def metadata(self, bundle_dir: Path, manifest: dict) -> dict | None:
        """What the artifact itself says (keys eos_ids, max_context, max_seq_len, vocab_size), read
        from its file for `verify`'s metadata checks; None where the artifact carries none."""
        return None


# ---- registry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """A command-line option of one target (`--<target>-<key>`), declared here so the CLI offers
    it without importing the target's backend."""
    target: str
    key: str  # the keyword its Target class takes
    choices: tuple[str, ...]
    help: str

    @property
    def flag(self) -> str:
        return f"--{self.target}-{self.key}"


OPTIONS: list[Option] = [
    Option("onnx", "accuracy", ("int8", "fp32"),
           "--target onnx: MatMulNBits compute, int8 activations (accuracy level 4, ORT's fast CPU path; the "
           "default) or fp32 (level 1)."),
    Option("onnx", "ort", ("off", "on"),
           "--target onnx: also write model.ort (ORT format, for ORT Mobile reduced builds) and its "
           "required-operators config."),
]


def options_for(target: str, given: dict[str, str | None]) -> dict:
    """The given options (flag -> value, None = not given) as `target`'s keywords; one line for an
    option of another target."""
    out = {}
    for o in OPTIONS:
        value = given.get(o.flag)
        if value is None:
            continue
        if o.target != target:
            raise UserError(f"{o.flag} applies to --target {o.target}, not {target}")
        out[o.key] = value
    return out


TARGETS: dict[str, str | type[Target]] = {
    "android": "mobilellm_export.backends.executorch.xnnpack:Android",
    "onnx": "mobilellm_export.backends.onnxruntime.target:Onnx",
    "ios": "mobilellm_export.backends.coreml.target:IOS",
}
_ENTRY_POINTS = "mobilellm_export.backends"


def register(name: str, target: str | type[Target]) -> None:
    """Add a target: a class, or "module:Class" imported on first use."""
    TARGETS[name] = target


def _all() -> dict[str, str | type[Target]]:
    found = {ep.name: ep.value for ep in metadata.entry_points(group=_ENTRY_POINTS)}
    return {**found, **TARGETS}


def names() -> list[str]:
    return sorted(_all())


class Names(Sequence):
    """The registered target names, read when used (click.Choice iterates it at parse time, so a
    target registered after import is still a valid --target)."""

    def __getitem__(self, i):
        return names()[i]

    def __len__(self):
        return len(names())


def get(name: str, options: dict | None = None) -> Target:
    """The target `name`, built with `options` (e.g. {"accuracy": "fp32"} for onnx)."""
    spec = _all().get(name)
    if spec is None:
        raise UserError(f"unknown target {name!r}: choose one of {', '.join(names())}")
    if isinstance(spec, str):
        module, _, cls = spec.partition(":")
        spec = getattr(importlib.import_module(module), cls)
    try:
        return spec(**(options or {}))
    except TypeError:  # e.g. a bundle.json from a newer version naming an option this one lacks
        raise UserError(f"target {name} takes no option {sorted(options or {})[0]!r}") from None


def of_bundle(manifest: dict) -> Target:
    """The target a bundle was built for, with the options it was built with."""
    t = manifest["target"]
    return get(t["name"], t.get("options"))
