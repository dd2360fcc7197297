"""Command-line values -> the pipeline's typed requests. Click stays in cli.py; the pipeline never
sees a flag string."""

from __future__ import annotations

from mobilellm_export.backends import flag, option_flags, options_for
from mobilellm_export.pipeline import Checking, ExportRequest, VerifyRequest
from mobilellm_export.verify.thresholds import parse_overrides


def checking(*, eval_text, eval_tokens, thresholds, no_latency, baseline, threads) -> Checking:
    return Checking(eval_text=eval_text, eval_tokens=eval_tokens, thresholds=parse_overrides(tuple(thresholds)),
                    latency=not no_latency, baseline=baseline, threads=threads)


def export_request(model: str, opts: dict) -> ExportRequest:
    """`opts`: the export command's click parameters (each target's `--<target>-<key>` included)."""
    given = {flag(t, o): opts.pop(option_dest(t, o)) for t, o in option_flags()}
    check = checking(**{k: opts.pop(k) for k in ("eval_text", "eval_tokens", "thresholds", "no_latency", "baseline",
                                                  "threads")})
    return ExportRequest(source=model, target=opts["target"], target_options=options_for(opts["target"], given),
                         quant=opts["quant"], tokenizer=opts["tokenizer"], out=opts["out"],
                         max_context=opts["max_context"], max_seq_len=opts["max_seq_len"],
                         calib_text=opts["calib_text"], size_mb=opts["size_mb"], verify=not opts["no_verify"],
                         checking=check)


def verify_request(bundle: str, *, report_dir, calib_text, source=None, tokenizer=None, quick=False,
                   **check) -> VerifyRequest:
    return VerifyRequest(bundle=bundle, report_dir=report_dir, calib_text=calib_text, source=source,
                         tokenizer=tokenizer, quick=quick, checking=checking(**check))


def option_dest(target: str, option) -> str:
    """The click parameter name of `--<target>-<key>`."""
    return flag(target, option).lstrip("-").replace("-", "_")
