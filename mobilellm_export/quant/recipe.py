"""Quantization recipes: TOML files as data (torchao's `quantize_(model, config)` spirit).

A recipe says what happens to the decoder linears, the embedding and the (tied) lm_head, plus
the quality bounds its artifacts must meet (`[thresholds]`: float -> artifact, whatever the
target). It names no target: a runtime's lowering bounds belong to its backend's class
(`Backend.thresholds`), and each backend's `check()` decides whether it can honour the recipe.
`[gate]` holds the tolerances of `--baseline` comparisons, and `[[override]]` tables set other
weights for the linears whose names match a pattern (e.g. `layers.*.mlp.down_proj`).
Unknown keys and impossible values are errors. Rounding methods, scale searches and model transforms
are names in registries (quant/registry.py): an installed plugin adds names a recipe may use
(`rounding = "..."`, `[[transform]] name = "..."`) with no change here.

The shipped recipes are package data (`quant_recipes/` in the source tree, installed as
`mobilellm_export.quant_recipes`); `--quant path/to/recipe.toml` reads any other file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mobilellm_export.errors import UserError, read_text


def _shipped():
    return resources.files("mobilellm_export.quant_recipes")


@dataclass(frozen=True)
class WeightQuant:
    bits: int = 0  # 0 = keep float; 4 or 8
    group_size: int = 0  # 0 = one scale per output channel / embedding row
    activations: str = "int8_dynamic"  # linears only: "int8_dynamic" (per token) | "none" (weight-only)
    scale_dtype: str = "bf16"  # XNNPACK keeps 4-bit block scales in bf16: match it in the reference
    # Which integers fill that format (quant/rounding/); none changes its size or speed. Both name
    # registry entries, so an installed plugin adds choices (quant/registry.py).
    scales: str = "minmax"  # "minmax" (torchao's rule) | "mse" (activation-weighted search) | "hqq" | plugin
    rounding: str = "nearest"  # "nearest" | "gptq" (error feedback through calibration Hessians) | plugin
    act_order: bool = False  # gptq: visit columns by decreasing input energy (static group scales)

    @property
    def quantized(self) -> bool:
        return self.bits != 0

    @property
    def calibrated(self) -> bool:
        """Does choosing the integers need calibration activations?"""
        from mobilellm_export.quant.rounding import ROUNDING, SCALES

        return self.quantized and (ROUNDING.get(self.rounding).needs_hessian or SCALES.get(self.scales).needs_hessian)

    @property
    def plain(self) -> bool:
        """torchao's own round-to-nearest: nothing to overwrite."""
        return self.scales == "minmax" and self.rounding == "nearest"


@dataclass(frozen=True)
class Thresholds:
    # float -> artifact (quantization quality; a regression bound)
    kl_mean: float = 1.0
    top1_min: float = 0.0
    ppl_delta_max: float = 10.0  # relative, 0.35 = +35 %
    # quantized eager -> artifact (the lowering error)
    lowering_kl_mean: float = 0.05
    lowering_top1_min: float = 0.8
    lowering_max_abs_logit: float | None = None  # fp32 recipes: an absolute bound
    lowering_max_abs_logit_rel: float | None = None  # max |diff| / max |reference logit|
    # The lowering pair against the noise floor measured in the same run: KL <= factor x floor KL +
    # slack, top-1 >= floor top-1 - slack. A correct artifact sits near the floor whatever the text
    # (SmolLM2 4bit: 0.0258 vs 0.0253 on Botchan, 0.0355 vs 0.0332 on another text), so a bound
    # relative to it does not fail a correct artifact on a harder text. The absolute bounds above
    # apply where the floor is 0 (fp32 and weight-only recipes) or no factor is set.
    lowering_kl_floor_factor: float | None = None
    lowering_kl_floor_slack: float = 0.0
    lowering_top1_floor_slack: float | None = None


@dataclass(frozen=True)
class Gate:
    """How much worse than a baseline report a metric may get before `--baseline` fails.

    KL tolerances are relative (plus `kl_abs` for near-zero KLs), top-1 and the perplexity delta
    absolute. Speed counts only when the baseline artifact is re-measured in the same run (paired);
    otherwise it only warns, since separate processes swing +-30 % on a shared machine.
    """
    kl_mean_rel: float = 0.03
    kl_p99_rel: float = 0.10
    kl_abs: float = 1e-4
    top1_abs: float = 0.005
    ppl_delta_abs: float = 0.01
    greedy_prefix_tokens: int = 8
    decode_rel: float = 0.10
    size_rel: float = 0.02


@dataclass(frozen=True)
class Calibration:
    """Calibration windows for the rounding methods: `tokens` tokens in windows of `window`, at offsets
    drawn with `seed` from the built-in text (or `--calib-text`). Seeded, so verify rebuilds the
    same integers; `text_sha256` pins a user text that the bundle was built with."""
    tokens: int = 8192
    window: int = 512
    seed: int = 0
    text: str = ""  # "" = built-in; else the file the export read
    text_sha256: str = ""


@dataclass(frozen=True)
class Auto:
    """Mixed precision under a size budget (quant/auto.py): per decoder block, one of `options`
    ("bits:group", group 0 = per channel), chosen by measured KL per byte."""
    size_mb: float = 0.0  # total bundle files, MB; `--size-mb` sets it
    options: tuple = ("4:128", "4:32", "8:0")
    head_options: tuple = ("8:0", "4:32")  # 4:32 puts a tied lookup on the same grid (one table)
    tokens: int = 1024  # calibration tokens scored per (block, format) trial
    resolved: bool = False  # the search ran: the overrides hold its plan (verify re-applies them)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str = ""
    linear: WeightQuant = WeightQuant()
    embedding: WeightQuant = WeightQuant(activations="none")
    head: WeightQuant = WeightQuant()
    thresholds: Thresholds = field(default_factory=Thresholds)
    gate: Gate = field(default_factory=Gate)
    overrides: tuple = ()  # ({"match": "layers.*.mlp.down_proj", "group_size": 128, ...}, ...): last match wins
    calibration: Calibration = field(default_factory=Calibration)
    auto: Auto | None = None
    smooth: float = 0.0  # SmoothQuant alpha (quant/transforms/smooth.py); 0 = off
    rotate: bool = False  # rotate the residual stream first (quant/transforms/rotate.py)
    transforms: tuple = ()  # ({"name": "<plugin transform>", **params}, ...): [[transform]], after the two above
    path: str = ""

    def weight_for(self, fqn: str) -> WeightQuant:
        """The quantization of the linear named `fqn` (`lm_head` takes [head]), after overrides."""
        w = self.head if fqn == "lm_head" else self.linear
        for ov in self.overrides:
            if fnmatch.fnmatchcase(fqn, ov["match"]):
                w = dataclasses.replace(w, **{k: v for k, v in ov.items() if k != "match"})
        return w

    def weights(self) -> list[WeightQuant]:
        return [self.linear, self.head] + [self.weight_for(o["match"]) for o in self.overrides]

    def transform_steps(self) -> list[tuple[str, dict]]:
        """The rewrites of the float model, in order (quant/transforms/): the built-in keys (rotate,
        then smooth), then the [[transform]] tables as written."""
        steps = [("rotate", {})] if self.rotate else []
        steps += [("smooth", {"alpha": self.smooth})] if self.smooth else []
        return steps + [(t["name"], {k: v for k, v in t.items() if k != "name"}) for t in self.transforms]

    @property
    def needs_calibration(self) -> bool:
        from mobilellm_export.quant.transforms import TRANSFORMS

        return (any(TRANSFORMS.get(n).needs_hessian for n, _ in self.transform_steps())
                or any(w.calibrated for w in self.weights()))

    @property
    def is_float(self) -> bool:
        return not (self.linear.quantized or self.embedding.quantized or self.head.quantized)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = [dict(o) for o in self.overrides]
        d["transforms"] = [dict(t) for t in self.transforms]
        if not d["transforms"]:  # as earlier versions wrote it: bundle.json stays byte for byte the same
            del d["transforms"]
        return d

    @classmethod
    def from_dict(cls, r: dict, where: str = "bundle.json") -> Recipe:
        """Inverse of to_dict (a bundle's manifest records the recipe it was built with). The methods
        and transforms it names must be registered: a bundle built with a plugin needs it installed.
        A wrong type or an unknown key is one line naming `where`, never a traceback."""
        try:
            recipe = cls._from_dict(r)
            for ov in recipe.overrides:
                if not isinstance(ov, dict) or not isinstance(ov.get("match"), str):
                    raise TypeError(f"override {ov!r} has no 'match' pattern")
            for part in (recipe.embedding, recipe.calibration, recipe.auto, *recipe.weights()):
                _typed(part)
            check_registered(recipe, f"recipe {recipe.name}")  # a plugin's method: the one line says which
            for w in recipe.weights() + [recipe.embedding]:
                _check_weight(w, f"{where} recipe", True)
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise UserError(f"{where}: its recipe is malformed ({type(e).__name__}: {str(e)[:120]})") from None
        return recipe

    @classmethod
    def _from_dict(cls, r: dict) -> Recipe:
        if not isinstance(r, dict) or not isinstance(r.get("name"), str):
            raise TypeError("not a table with a name")
        known = {f.name for f in dataclasses.fields(cls)} | {"target_thresholds"}  # schema 2 wrote the last
        unknown = sorted(set(r) - known)
        if unknown:
            raise KeyError(f"unknown key {unknown[0]!r}")
        return cls(name=r["name"], description=r.get("description", ""), linear=WeightQuant(**r["linear"]),
                     embedding=WeightQuant(**r["embedding"]), head=WeightQuant(**r["head"]),
                     thresholds=Thresholds(**r["thresholds"]),
                     gate=Gate(**r.get("gate", {})), overrides=tuple(r.get("overrides", ())),
                     calibration=Calibration(**r.get("calibration", {})),
                     auto=None if r.get("auto") is None else Auto(**{
                         **r["auto"], "options": tuple(r["auto"]["options"]),
                         "head_options": tuple(r["auto"].get("head_options", Auto.head_options))}),
                     smooth=r.get("smooth", 0.0), rotate=r.get("rotate", False),
                     transforms=tuple(r.get("transforms", ())), path=r.get("path", ""))


_GROUPS = (0, 16, 32, 64, 128, 256)


def _section(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a table")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(names))})")
    try:
        return cls(**raw)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None


def _typed(part) -> None:
    """Every field of a recipe part has its default's type (an int where a float is expected is
    fine): values read back from a bundle, so a string where a number goes fails here, not later."""
    if part is None:
        return
    for f in dataclasses.fields(part):
        want, v = f.default, getattr(part, f.name)
        if want is dataclasses.MISSING or want is None:
            continue
        if isinstance(want, bool) or not isinstance(want, (int, float)):
            ok = type(v) is type(want)
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(want, float) or type(v) is int)
        if not ok:
            raise TypeError(f"{type(part).__name__}.{f.name} = {v!r} is not a {type(want).__name__}")


def _check_weight(w: WeightQuant, where: str, linear: bool) -> None:
    if w.bits not in (0, 4, 8):
        raise UserError(f"{where}.bits = {w.bits!r}: must be 0 (float), 4 or 8")
    if w.group_size not in _GROUPS:
        raise UserError(f"{where}.group_size = {w.group_size!r}: must be one of {_GROUPS} (0 = per channel)")
    if w.activations not in ("int8_dynamic", "none"):
        raise UserError(f"{where}.activations = {w.activations!r}: must be 'int8_dynamic' or 'none'")
    if not linear and w.activations != "none":
        raise UserError(f"{where}.activations: embeddings take no activation quantization; use 'none'")
    if w.scale_dtype not in ("bf16", "fp32"):
        raise UserError(f"{where}.scale_dtype = {w.scale_dtype!r}: must be 'bf16' or 'fp32'")
    from mobilellm_export.quant.rounding import ROUNDING, SCALES

    SCALES.get(w.scales, f"{where}.scales")
    method = ROUNDING.get(w.rounding, f"{where}.rounding")
    if not isinstance(w.act_order, bool) or (w.act_order and not getattr(method, "supports_act_order", False)):
        raise UserError(f"{where}.act_order = {w.act_order!r}: a boolean, and only with a rounding that "
                        f"reads it (rounding = 'gptq')")
    if not linear and not w.plain:
        raise UserError(f"{where}: embeddings are rounded to nearest (the shared head's integers serve a tied lookup)")


def parse_recipe(text: str, name: str, path: str = "") -> Recipe:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {path or name}: invalid TOML: {e}") from None
    except RecursionError:  # tomllib recurses into nested inline tables and arrays
        raise UserError(f"recipe {path or name}: invalid TOML: nested too deeply") from None
    where = Path(path).name if path else name
    top = {"name", "description", "linear", "embedding", "head", "thresholds", "gate", "override", "calibration", "auto",
           "smooth", "rotate", "transform"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise UserError(f"recipe {where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(top))})")
    linear = _section(WeightQuant, raw.get("linear", {}), f"recipe {where} [linear]")
    emb = _section(WeightQuant, {"activations": "none", **raw.get("embedding", {})}, f"recipe {where} [embedding]")
    head = _section(WeightQuant, raw.get("head", {}), f"recipe {where} [head]")
    th_raw = raw.get("thresholds", {})
    for key, v in (th_raw.items() if isinstance(th_raw, dict) else ()):
        if isinstance(v, dict):  # schema 2's [thresholds.<target>]: a runtime's bounds are its backend's
            raise UserError(f"recipe {where} [thresholds.{key}]: a runtime's lowering bounds belong to its backend, "
                            f"not to a recipe; loosen one with --threshold NAME=VALUE")
    th = _section(Thresholds, th_raw, f"recipe {where} [thresholds]")
    _check_weight(linear, f"recipe {where} linear", True)
    _check_weight(emb, f"recipe {where} embedding", False)
    _check_weight(head, f"recipe {where} head", True)
    gate = _section(Gate, raw.get("gate", {}), f"recipe {where} [gate]")
    for f in dataclasses.fields(Gate):
        v = getattr(gate, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise UserError(f"recipe {where} [gate] {f.name} = {v!r}: must be a number >= 0")
    overrides = raw.get("override", [])
    if not isinstance(overrides, list):
        raise UserError(f"recipe {where}: override must be an array of tables ([[override]])")
    for i, ov in enumerate(overrides):
        at = f"recipe {where} [[override]] #{i + 1}"
        if not isinstance(ov, dict) or not isinstance(ov.get("match"), str) or not ov["match"]:
            raise UserError(f"{at}: needs match = \"<pattern over linear names>\", e.g. \"layers.*.mlp.down_proj\"")
        fields = {k: v for k, v in ov.items() if k != "match"}
        base = head if ov["match"] == "lm_head" else linear
        _check_weight(_section(WeightQuant, {**dataclasses.asdict(base), **fields}, at), at, True)
    cal = _section(Calibration, raw.get("calibration", {}), f"recipe {where} [calibration]")
    if cal.text or cal.text_sha256:
        raise UserError(f"recipe {where} [calibration]: give the text with --calib-text, not in the recipe")
    for k in ("tokens", "window", "seed"):
        v = getattr(cal, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 2):
            raise UserError(f"recipe {where} [calibration] {k} = {v!r}: must be an integer >= {0 if k == 'seed' else 2}")
    auto = None
    if "auto" in raw:
        auto = _section(Auto, raw["auto"], f"recipe {where} [auto]")
        auto = dataclasses.replace(auto, options=tuple(auto.options), head_options=tuple(auto.head_options))
        for o in auto.options + auto.head_options:
            bits, _, group = str(o).partition(":")
            if not (bits.isdigit() and group.isdigit() and int(bits) in (4, 8) and int(group) in _GROUPS):
                raise UserError(f"recipe {where} [auto] options: {o!r} is not 'bits:group' (bits 4 or 8, group in "
                                f"{_GROUPS})")
        if not linear.quantized or isinstance(auto.tokens, bool) or not isinstance(auto.tokens, int) or auto.tokens < 2:
            raise UserError(f"recipe {where} [auto]: needs a quantized [linear] and tokens >= 2")
    smooth = raw.get("smooth", 0.0)
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth <= 1:
        raise UserError(f"recipe {where}: smooth = {smooth!r} must be a number in [0, 1] (SmoothQuant alpha; 0 = off)")
    rotate = raw.get("rotate", False)
    if not isinstance(rotate, bool):
        raise UserError(f"recipe {where}: rotate = {rotate!r} must be true or false")
    transforms = _transform_tables(raw.get("transform", []), where)
    recipe = Recipe(name=raw.get("name", name), description=raw.get("description", ""), linear=linear,
                    embedding=emb, head=head, thresholds=th, gate=gate,
                    overrides=tuple(overrides), calibration=cal, auto=auto, smooth=float(smooth), rotate=rotate,
                    transforms=transforms, path=path)
    from mobilellm_export.quant.transforms import TRANSFORMS

    for key, params in recipe.transform_steps():  # each rewrite of the float model says what it can take
        check = getattr(TRANSFORMS.get(key), "check_recipe", None)
        if check is not None:
            check(recipe, params, f"recipe {where}")
    return recipe


def _transform_tables(tables, where: str) -> tuple:
    """[[transform]] tables: registered transforms beyond the built-in keys, in the order written."""
    from mobilellm_export.quant.transforms import BUILTIN_KEYS, TRANSFORMS

    if not isinstance(tables, list):
        raise UserError(f"recipe {where}: transform must be an array of tables ([[transform]])")
    seen = set()
    for i, t in enumerate(tables):
        at = f"recipe {where} [[transform]] #{i + 1}"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise UserError(f"{at}: needs name = \"<transform>\" (known: {', '.join(TRANSFORMS.names())})")
        if t["name"] in BUILTIN_KEYS:
            raise UserError(f"{at}: {t['name']} is set by the top-level key {t['name']} = ..., not a [[transform]]")
        if t["name"] in seen:
            raise UserError(f"{at}: transform {t['name']!r} is listed twice")
        seen.add(t["name"])
        TRANSFORMS.get(t["name"], at)
    return tuple(dict(t) for t in tables)


def check_registered(recipe: Recipe, where: str) -> None:
    """Every rounding method, scale search and transform `recipe` names is registered (else a
    UserError naming it): a recipe read back from a bundle needs the plugins it was built with."""
    from mobilellm_export.quant.rounding import ROUNDING, SCALES
    from mobilellm_export.quant.transforms import TRANSFORMS

    named = [("linear", recipe.linear), ("embedding", recipe.embedding), ("head", recipe.head)]
    named += [(f"[[override]] {o['match']}", recipe.weight_for(o["match"])) for o in recipe.overrides]
    for label, w in named:
        SCALES.get(w.scales, f"{where} {label}.scales")
        ROUNDING.get(w.rounding, f"{where} {label}.rounding")
    for key, _ in recipe.transform_steps():
        TRANSFORMS.get(key, f"{where} transforms")


def available() -> list[str]:
    return sorted(p.name[:-5] for p in _shipped().iterdir() if p.name.endswith(".toml"))


def shipped(name: str) -> Recipe | None:
    """The recipe this tool ships under `name`, or None (a name is never read as a path)."""
    if name not in available():
        return None
    return parse_recipe((_shipped() / f"{name}.toml").read_text(encoding="utf-8"), name, "")


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name (e.g. '4bit') or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        recipe = shipped(name_or_path)
        if recipe is None:
            raise UserError(f"unknown recipe {name_or_path!r}: choose one of {', '.join(available())} "
                            f"or give a .toml path")
        return recipe
    if not p.is_file():
        raise UserError(f"recipe file {name_or_path} does not exist")
    return parse_recipe(read_text(p, "recipe file", 1 << 20), p.stem, str(p))


def same_grid(a: WeightQuant, b: WeightQuant) -> bool:
    """Can one set of integers and scales serve both the embedding `a` and the head `b`?

    The runtimes read a shared table as int8 per channel or int4 groupwise (bf16 scales).
    """
    if a.bits != b.bits or a.group_size != b.group_size:
        return False
    return (a.bits == 8 and a.group_size == 0) or (a.bits == 4 and a.group_size > 0 and b.scale_dtype == "bf16")


def effective_group(w: WeightQuant, in_features: int) -> int:
    """The recipe's group if it divides in_features, else the largest smaller power of two that does
    (>= 32), else per channel (0)."""
    g = w.group_size
    if g == 0 or in_features % g == 0:
        return g
    for cand in (256, 128, 64, 32):
        if cand < g and in_features % cand == 0:
            return cand
    return 0
