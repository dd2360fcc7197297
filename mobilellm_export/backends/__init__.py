"""Backends: one package per runtime family, each registering one or more targets.

The pipeline, the bundle, verification and the CLI know a target only through `Target` and the
registry below. A target declares on its class everything that is about its runtime (its options,
lowering bounds, size model and recipe checks), so that nothing outside backends/ names a target:

    OPTIONS                    the target's command-line options (`--<target>-<key>`), with defaults
    check(recipe, spec)        UserError before any work if the recipe cannot be honoured;
                               returns notes for the report where the target reinterprets it
    thresholds(th, recipe)     the recipe's bounds with this runtime's lowering bounds
    overhead_bytes(cfg, ctx)   artifact bytes beyond the weights (4bit-auto's budget)
    reference(quantized)       the eager model this artifact must match (it may be `quantized` itself)
    prepare(model, spec)       module swaps (own KV cache, attention, norms); still runs eagerly;
                               works on a structural copy, so the reference stays untouched
    export(model, spec, dir)   writes the artifact files into the bundle folder -> Artifact
    runner(bundle, manifest)   a Runner over the artifact, or None where the runtime cannot run here
    app_runner(bundle, ...)    the runtime's own text-in/text-out loop (what the apps wrap), or None:
                               `run` and the app-side latency use it
    device_runner(bundle, ...) the artifact in the device's own arithmetic (fp16), where runner() is a
                               higher-precision stand-in (`precision` says which); else None
    metadata(bundle, manifest) EOS ids, context and vocabulary as the artifact file records them
    min_runtime(bundle, tools) the oldest runtime that loads the artifact ({name, version}), from its
                               files and the versions of the packages that wrote them, or None
    lower(reference, spec, dir, fault=None)
                               prepare + export, optionally with one seeded fault in the prepared
                               model (`seeded_fault`): the gate's evidence and the conformance suite
                               show that such an artifact fails verification
    probe(prepared, spec, dir) a function running tokens through the prepared model lowered as the
                               artifact is, with `Transformer.probe` on: (hidden states, logits)
                               per position, for `verify.localise`; None where it cannot

A target module keeps its exporter's imports inside methods: listing targets (the CLI's --help)
imports no torch. Targets are registered by the `mobilellm_export.backends` entry-point group (the
built-in ones too, in pyproject.toml), or by `register()` at run time.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from mobilellm_export.bundle import tool_versions
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
    # Modules its export and runners import: the pipeline imports them before the first model and
    # keeps them out of the garbage collector's walks (memory.settle_imports).
    imports: ClassVar[tuple[str, ...]] = ()

    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    # The arithmetic of the runtime on a device: "fp32", or "fp16" (the conformance suite then holds
    # device_runner() to an fp16 bound and runner() to the target's own fp16-rounded reference).
    precision: ClassVar[str] = "fp32"
    # How a bundle of this target gets onto a device, one line ({bundle}: its path), printed at the
    # end of an export.
    app: ClassVar[str] = ""

    def __init__(self, **options):
        known = {o.key: o for o in self.OPTIONS}
        for key, value in options.items():
            if key not in known:  # e.g. a bundle.json from a newer version naming an option this one lacks
                raise UserError(f"target {self.name} takes no option {key!r}")
            if value not in known[key].choices:
                raise UserError(f"--{self.name}-{key.replace('_', '-')} {value!r}: choose one of "
                                f"{', '.join(known[key].choices)}")
        self._options = {o.key: options.get(o.key, o.default) for o in self.OPTIONS}

    @property
    def options(self) -> dict:
        """The options this target was built with, recorded in bundle.json (target.options)."""
        return dict(self._options)

    @classmethod
    def from_manifest(cls, target: dict) -> Target:
        """The target a bundle's `target` table describes, built with the options it recorded."""
        return cls(**target.get("options", {}))

    def overhead_bytes(self, cfg: ModelConfig, max_context: int) -> float:
        """Artifact bytes besides the weights (quant/size.py's estimate), for 4bit-auto's budget."""
        return 0.0

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

    def device_runner(self, bundle_dir: Path, manifest: dict, threads: int | None = None) -> Runner | None:
        return None

    # The localiser's per-op tolerance (verify/localise.py): how far a correct lowering's op may be
    # from the reference given the same input. A runtime that rounds activations its reference does
    # not (ONNX's int8 MatMulNBits) needs more than rounding noise.
    localise_tolerance: float = 2e-3

    def copy_prepared(self, prepared):
        """A copy of a prepared model that shares its weights and lowers as it does."""
        from mobilellm_export.nn_utils import structural_copy

        return structural_copy(prepared)

    def seeded_fault(self, reference: Transformer, prepared, seed: int):
        """A copy of `prepared` with one seeded lowering fault: one (seeded) layer's MLP
        down-projection replaced by a float linear whose weight is the reference's, scaled by 1.5. A
        float linear is something every target lowers, and `prepared` (which shares tensors with
        `reference`) is not changed. A target whose prepared model names its linears differently
        overrides this."""
        import torch
        import torch.nn as nn

        from mobilellm_export.quant.simulate import dequant, quantized

        g = torch.Generator().manual_seed(seed)
        layer = int(torch.randint(0, reference.cfg.n_layers, (1,), generator=g))
        name = f"layers.{layer}.mlp.down_proj"
        src = reference.get_submodule(name)  # torchao, float, or a weight-only reference's dense DequantLinear
        q = quantized(src.weight)
        w = (dequant(q[0], q[1]) if q is not None else src.weight.detach()).float().clone()
        w *= 1.5  # the layer's MLP output half again too large: a wrong scale, as a lowering bug makes
        faulty = self.copy_prepared(prepared)
        path = next(n for n, _ in faulty.named_modules() if n == name or n.endswith("." + name))
        parent, _, leaf = path.rpartition(".")
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight = nn.Parameter(w.to(getattr(reference, "dtype", torch.float32)), requires_grad=False)
        setattr(faulty.get_submodule(parent), leaf, lin)
        return faulty

    def lower(self, reference: Transformer, spec: ExportSpec, out_dir: Path, status: Callable[[str], None] = lambda m: None,
              fault: int | None = None) -> Artifact:
        """prepare + export, as the pipeline lowers, with the artifact's `min_runtime` among its
        manifest keys; `fault`: the seed of one `seeded_fault`."""
        prepared = self.prepare(reference, spec)
        if fault is not None:
            prepared = self.seeded_fault(reference, prepared, fault)
        art = self.export(prepared, spec, out_dir, status=status)
        need = self.min_runtime(Path(out_dir), tool_versions(self.tools))
        if need is not None:  # -> bundle.json's target.min_runtime, which the apps compare with their runtime
            art.manifest["min_runtime"] = need
        return art

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

    def min_runtime(self, bundle_dir: Path, tools: dict[str, str]) -> dict | None:
        """The oldest runtime that loads the artifact in bundle_dir, {"name", "version"} (e.g.
        executorch 1.5.1), from the artifact's files and `tools`, the versions of the packages that
        wrote it (bundle.json's `tools`). Recorded as target.min_runtime; the apps refuse a bundle
        that needs a newer runtime than theirs. None: unknown, nothing recorded."""
        return None

    def recorded_min_runtime(self, bundle_dir: Path, manifest: dict) -> dict:
        """{"min_runtime": ...} re-derived for `target_section`, when the bundle records one: bundles
        written before the field existed have none, and verify as they did."""
        if "min_runtime" not in manifest["target"]:
            return {}
        need = self.min_runtime(Path(bundle_dir), manifest.get("tools", {}))
        return {} if need is None else {"min_runtime": need}

    def target_section(self, bundle_dir: Path, manifest: dict) -> dict | None:
        """bundle.json's `target` section as `export` writes it for this bundle's artifact (its entry
        and Artifact.manifest; name, runtime and options are added by the caller), re-derived from
        the artifact and the target's options, for `verify` to compare. None: this target cannot say
        (a plug-in), and its section goes unchecked."""
        return None

    def file_checks(self, bundle_dir: Path, manifest: dict) -> list[dict]:
        """Checks of the other files this target's apps read values from (onnxruntime-genai's
        genai_config.json), each {name, ok, manifest, derived, source, message}, for `verify`."""
        return []


def release(version: str | None) -> str | None:
    """The release a package version names, for target.min_runtime: "1.5.1+cpu" -> "1.5.1", a
    pre-release "1.6.0.dev20260901" or "1.6.0rc1" -> "1.6.0" (the release it leads to); None for none."""
    m = re.match(r"[0-9]+(?:\.[0-9]+)*", version or "")
    return m.group(0) if m else None


# ---- registry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """A command-line option of one target, `--<target>-<key>` (underscores as dashes)."""
    key: str  # the keyword its Target class takes
    choices: tuple[str, ...]
    default: str
    help: str


_ENTRY_POINTS = "mobilellm_export.backends"
_REGISTERED: dict[str, str | type[Target]] = {}


def register(name: str, target: str | type[Target]) -> None:
    """Add a target at run time: a class, or "module:Class" imported on first use."""
    _REGISTERED[name] = target


def _all() -> dict[str, str | type[Target]]:
    found = {ep.name: ep.value for ep in metadata.entry_points(group=_ENTRY_POINTS)}
    return {**found, **_REGISTERED}


def names() -> list[str]:
    return sorted(_all())


class Names(Sequence):
    """The registered target names, read when used (click.Choice iterates it at parse time, so a
    target registered after import is still a valid --target)."""

    def __getitem__(self, i):
        return names()[i]

    def __len__(self):
        return len(names())


def target_class(name: str) -> type[Target]:
    spec = _all().get(name)
    if spec is None:
        raise UserError(f"unknown target {name!r}: choose one of {', '.join(names())}")
    if isinstance(spec, str):
        module, _, cls = spec.partition(":")
        try:
            spec = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as e:
            raise UserError(f"target {name}: cannot load {module}:{cls} ({e})") from None
    return spec


def get(name: str, options: dict | None = None) -> Target:
    """The target `name`, built with `options` (e.g. {"accuracy": "fp32"} for onnx)."""
    return target_class(name)(**(options or {}))


def of_bundle(manifest: dict) -> Target:
    """The target a bundle was built for, with the options it was built with."""
    t = manifest["target"]
    return target_class(t["name"]).from_manifest(t)


def option_flags() -> list[tuple[str, Option]]:
    """Every registered target's options as (target name, Option): the CLI's `--<target>-<key>` flags."""
    return [(name, o) for name in names() for o in target_class(name).OPTIONS]


def flag(target: str, o: Option) -> str:
    return f"--{target}-{o.key.replace('_', '-')}"


def options_for(target: str, given: dict[str, str | None]) -> dict:
    """The given options (flag -> value, None = not given) as `target`'s keywords; one line for an
    option of another target."""
    out = {}
    for name, o in option_flags():
        value = given.get(flag(name, o))
        if value is None:
            continue
        if name != target:
            raise UserError(f"{flag(name, o)} applies to --target {name}, not {target}")
        out[o.key] = value
    return out
