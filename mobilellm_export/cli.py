"""Command line: options -> one library call -> progress and a summary. No logic lives here.

    mobilellm-export export --model SOURCE --target android --quant 4bit [--out DIR]
    mobilellm-export --model SOURCE ...            (the same: `export` is the default command)
    mobilellm-export inspect SOURCE
    mobilellm-export generate SOURCE --prompt "..."
    mobilellm-export verify BUNDLE
    mobilellm-export run BUNDLE --prompt "..."
"""

from __future__ import annotations

import functools
import json
import sys

import click

from mobilellm_export import __version__
from mobilellm_export.errors import user_message
from mobilellm_export.backends import Names, flag, option_flags


def _fail(msg: str, code: int = 2):
    from mobilellm_export.console import err

    click.echo(f"error: {msg}", err=True, file=err())
    sys.exit(code)


def friendly(fn):
    """User-caused failures end in one line and exit 2; Ctrl-C in one line and exit 130.

    Inside, a console Session hides third-party output unless --verbose (see console.py)."""

    @functools.wraps(fn)
    def wrapper(*a, verbose=False, **kw):
        from mobilellm_export.console import Session
        from mobilellm_export.signals import Terminated, terminate_cleanly

        try:
            with terminate_cleanly(), Session(verbose):
                return fn(*a, **kw)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written", 130)
        except Terminated as t:
            _fail(f"terminated by {t.name}; nothing was written", 128 + t.signum)
        except BaseException as e:  # noqa: BLE001  pyo3's PanicException is a BaseException
            msg = user_message(e)
            if msg is None:
                raise
            _fail(msg)

    return click.option("--verbose", is_flag=True, help="Show third-party warnings and native log lines.")(wrapper)


class DefaultToExport(click.Group):
    """`mobilellm-export --model X ...` is `mobilellm-export export --model X ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["export", *args]
        return super().parse_args(ctx, args)

    def main(self, *args, **kwargs):
        """click's usage errors (a bad flag or value) as one `error:` line and exit 2, like every other
        bad input, instead of its usage block."""
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            _fail("interrupted; nothing was written", 130)
        except click.ClickException as e:
            msg = " ".join(e.format_message().split())
            hint = " (see --help)" if isinstance(e, click.UsageError) else ""
            _fail(msg + hint, e.exit_code if e.exit_code != 1 else 2)


@click.group(cls=DefaultToExport, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mobilellm-export")
def main():
    """Export small LLMs (MobileLLM-R1, MobileLLM, Llama, SmolLM2) to verified on-device bundles."""
    _fixed_hash_seed()


def _fixed_hash_seed() -> None:
    """Reproducible builds: coremltools' graph passes iterate sets of op names, so a converted Core ML
    program depended on the process's string-hash seed (two exports of one model differed in their
    ops). The command re-runs itself once under PYTHONHASHSEED=0, before any work; only as the program
    itself (the console script or `python -m mobilellm_export.cli`), never inside a host process that
    calls main() (a test's CliRunner, a wrapper script)."""
    import os
    from pathlib import Path

    argv0 = Path(sys.argv[0])
    if os.environ.get("PYTHONHASHSEED") is None and argv0.name in ("mobilellm-export", "cli.py") and argv0.is_file():
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "mobilellm_export.cli", *sys.argv[1:]])


def _emit(rep: dict, progress, as_json: bool, junit: str | None = None, started: float = 0.0) -> None:
    """The summary (or JSON), then the CI outputs: the JUnit file, and under GitHub Actions the
    step summary and ::error / ::warning annotations."""
    import time

    from mobilellm_export.console import err, out
    from mobilellm_export.verify import ci
    from mobilellm_export.verify.report import markdown, print_summary

    if as_json:
        print(json.dumps(rep, indent=2), file=out())
    elif not progress.quiet:
        print_summary(rep, progress.console)
    checks = rep.get("gate", {}).get("checks", [])
    if junit:
        ci.write_junit(checks, junit, f"{rep['model']}-{rep['target']}-{rep['recipe']}", time.monotonic() - started)
    ci.github_annotations(checks, markdown(rep), out=err() if as_json else out())  # stdout carries the JSON


def _say_failed(rep: dict, progress, see: str = "") -> None:
    from rich.markup import escape

    failed = "; ".join(c["name"] for c in rep["gate"]["checks"] if c["status"] == "fail")
    progress.console.print(f"[red]gate failed[/]: {escape(failed)}{see}", style="bold", highlight=False)


def _progress(quiet: bool):
    from mobilellm_export.console import Progress
    from mobilellm_export.memory import TreeWatch

    return Progress(quiet=quiet, watch=TreeWatch().__enter__())  # a daemon sampler for the command's life


THREADS = click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 256),
                       help="CPU threads for eager models and the runtime (recorded in the report).")
EVAL_TEXT = click.option("--eval-text", type=click.Path(exists=True, dir_okay=False),
                         help="Text for parity (default: built-in).")
CALIB_TEXT = click.option("--calib-text", type=click.Path(exists=True, dir_okay=False),
                          help="Calibration text for recipes that round with it (default: built-in, disjoint "
                               "from the default evaluation text).")
BASELINE = click.option("--baseline", type=click.Path(), metavar="OLD/report.json",
                        help="Fail when a metric regresses past the recipe's [gate] tolerance against this report.")
def _outside_bundles(ctx, param, value):
    """--junit is refused inside a bundle while the flags are read, before any work (the tool never
    writes into a bundle)."""
    if value:
        from pathlib import Path

        from mobilellm_export.bundle import outside_bundles
        from mobilellm_export.errors import UserError

        try:
            outside_bundles(Path(value).parent, "--junit")
        except UserError as e:
            raise click.BadParameter(str(e)) from None
    return value


JUNIT = click.option("--junit", type=click.Path(dir_okay=False), metavar="FILE", callback=_outside_bundles,
                     help="Write one JUnit testcase per check (any CI system renders it).")
EVAL_TOKENS = click.option("--eval-tokens", default=4096, show_default=True, type=click.IntRange(16),
                           help="Tokens of the eval text scored (windows of 512). The recipe thresholds are set on 4096.")


def TARGET_OPTIONS(fn):
    """Each registered target's own options (Target.OPTIONS), e.g. --onnx-accuracy."""
    from mobilellm_export.cli_flags import option_dest

    for target, o in reversed(option_flags()):
        fn = click.option(flag(target, o), option_dest(target, o), type=click.Choice(o.choices), help=o.help)(fn)
    return fn


@main.command()
@click.option("--model", "model", required=True, help="Preset, smollm2-135m, HF directory, .gguf file or hub id.")
@click.option("--target", type=click.Choice(Names()), default="android", show_default=True)
@click.option("--quant", default="4bit", show_default=True, help="Shipped recipe name or a .toml path.")
@click.option("--tokenizer", help="tokenizer.json (or its folder) when the source has none.")
@click.option("--out", default="out", show_default=True, type=click.Path(file_okay=False))
@click.option("--max-context", default=2048, show_default=True, type=click.IntRange(16, 1 << 17))
@click.option("--max-seq-len", default=128, show_default=True, type=click.IntRange(1, 4096),
              help="Longest prefill chunk the artifact takes in one call.")
@EVAL_TEXT
@EVAL_TOKENS
@CALIB_TEXT
@click.option("--size-mb", type=click.FloatRange(min=1, min_open=False),
              help="Size budget in MB for the model files, tokenizer excluded (recipes with an [auto] table, "
                   "e.g. --quant 4bit-auto).")
@TARGET_OPTIONS
@click.option("--no-verify", is_flag=True, help="Skip parity and latency checks.")
@click.option("--no-latency", is_flag=True, help="Verify parity, skip the latency measurement.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE",
              help="Override a recipe threshold, e.g. --threshold kl_mean=0.3")
@BASELINE
@JUNIT
@THREADS
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly
def export(model, quiet, as_json, junit, **opts):
    """Export SOURCE to a verified bundle (the default command)."""
    import time

    from mobilellm_export.cli_flags import export_request
    from mobilellm_export.pipeline import export_command

    started = time.monotonic()
    progress = _progress(quiet or as_json)
    path, rep = export_command(export_request(model, opts), progress)
    _emit(rep, progress, as_json, junit, started)
    if rep.get("passed") is False:
        _say_failed(rep, progress, f" (see {path / 'report.md'})")
        sys.exit(1)
    if not progress.quiet:
        from mobilellm_export import backends
        from mobilellm_export.verify.report import next_steps

        progress.console.print("\n".join(next_steps(path, backends.get(rep["target"]).app)), highlight=False,
                               soft_wrap=True, markup=False)


@main.command()
@click.argument("source")
@click.option("--tokenizer", help="tokenizer.json (or its folder) when the source has none.")
@friendly
def inspect(source, tokenizer):
    """Architecture, parameter count, tokenizer, context and estimated artifact sizes."""
    from mobilellm_export.console import out
    from mobilellm_export.describe import describe
    from mobilellm_export.checkpoints import load

    click.echo(describe(load(source, tokenizer=tokenizer, weights=False)), file=out())


@main.command()
@click.argument("source")
@click.option("--prompt", required=True)
@click.option("--tokenizer", help="tokenizer.json (or its folder) when the source has none.")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=0, show_default=True)
@click.option("--system", help="System prompt, or 'math' / 'code' for the MobileLLM-R1 prompts.")
@click.option("--raw", is_flag=True, help="Do not apply the chat template.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@THREADS
@friendly
def generate(source, prompt, tokenizer, max_new_tokens, temperature, top_p, seed, system, raw, dtype, threads):
    """Float generation with the reference model (streams text, prints tok/s)."""
    import torch

    from mobilellm_export.console import err, out
    from mobilellm_export.float_chat import stream_generate
    from mobilellm_export.sampling import Sampling
    from mobilellm_export.checkpoints import load

    torch.set_num_threads(threads)
    o, e = out(), err()
    stats = stream_generate(load(source, tokenizer=tokenizer), prompt, max_new_tokens,
                            Sampling(temperature, top_p, seed), system=system, raw=raw, dtype=dtype,
                            write=lambda s: (o.write(s), o.flush()), warn=lambda s: click.echo(s, file=e))
    click.echo(file=o)
    click.echo(f"[{stats['new_tokens']} tokens, prefill {stats['prefill_tok_s']:.1f} tok/s, "
               f"decode {stats['decode_tok_s']:.1f} tok/s]", file=e)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@EVAL_TEXT
@EVAL_TOKENS
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE")
@click.option("--no-latency", is_flag=True)
@CALIB_TEXT
@BASELINE
@JUNIT
@click.option("--report-dir", type=click.Path(file_okay=False),
              help="Write report.json, report.md and the plots here (the bundle itself is never written).")
@click.option("--source", metavar="PATH", help="The float model the bundle was built from (a HF folder or .gguf). "
              "Needed unless it is a preset or the offline default: verify never opens a path a bundle names.")
@click.option("--tokenizer", metavar="PATH", help="The tokenizer the export was given with --tokenizer (default: the "
              "source's own): the bundle's must be it.")
@click.option("--quick", is_flag=True, help="Seconds, no source: hashes, the artifact's own metadata, and the "
              "artifact against the reference logits the bundle carries (catches a changed artifact, not a bundle "
              "rewritten as a whole).")
@THREADS
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def verify(bundle, eval_text, eval_tokens, thresholds, no_latency, calib_text, baseline, junit, report_dir, source,
           tokenizer, quick, threads, quiet, as_json):
    """Re-check an existing bundle: sha256 of every file, metadata, parity, latency, baseline.

    The bundle is untrusted data: its bounds are the tool's (`--threshold` alone loosens one), and it
    is judged against the float model given here, not one it names. `--quick` judges it against the
    reference logits stored at export instead, and says what that leaves unchecked."""
    import time

    from mobilellm_export.cli_flags import verify_request
    from mobilellm_export.pipeline import verify_command

    started = time.monotonic()
    progress = _progress(quiet or as_json)
    rep = verify_command(verify_request(bundle, eval_text=eval_text, eval_tokens=eval_tokens, thresholds=thresholds,
                                        no_latency=no_latency, baseline=baseline, threads=threads,
                                        report_dir=report_dir, calib_text=calib_text, source=source,
                                        tokenizer=tokenizer, quick=quick), progress)
    _emit(rep, progress, as_json, junit, started)
    if rep["passed"] is False and not as_json:
        _say_failed(rep, progress)
    sys.exit(0 if rep["passed"] else 1)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--prompt")
@click.option("--conversation", type=click.Path(dir_okay=False, allow_dash=True), metavar="CONV.json",
              help='A multi-turn conversation {"messages": [...], "enable_thinking": ...}, formatted as the apps '
                   'do ("-": standard input).')
@click.option("--thinking/--no-thinking", "enable_thinking", default=None,
              help="enable_thinking for templates that have it (default: the conversation's, else the template's).")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--temperature", type=click.FloatRange(0), help="Default: the bundle's generation default.")
@click.option("--system", help="System prompt, or 'math' / 'code' for the MobileLLM-R1 prompts.")
@click.option("--raw", is_flag=True, help="Do not apply the chat template.")
@THREADS
@friendly
def run(bundle, prompt, conversation, enable_thinking, max_new_tokens, temperature, system, raw, threads):
    """Generate through the target runtime's own loop (ExecuTorch's C++ runner), as the apps do.

    Without --prompt or --conversation: a chat, one line per turn ('/reset' starts again, Ctrl-D
    ends), reusing the KV cache from turn to turn as the apps do."""
    from mobilellm_export.console import err, out
    from mobilellm_export.run_bundle import chat, run_bundle

    o, e = out(), err()
    if prompt is None and conversation is None:
        if raw:
            raise click.UsageError("--raw needs --prompt (a chat always uses the chat template)")
        tty = sys.stdin.isatty()
        if tty:
            click.echo("chat: one line per turn; /reset starts a new conversation, Ctrl-D ends", file=e)

        def read():  # not input(): fd 1 is the captured library log (console.Session)
            if tty:
                o.write("you> ")
                o.flush()
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None
        chat(bundle, read=read, max_new_tokens=max_new_tokens, temperature=temperature, system=system,
             threads=threads, write=lambda s: (o.write(s), o.flush()), warn=lambda s: click.echo(s, file=e),
             enable_thinking=enable_thinking)
        return
    stats = run_bundle(bundle, prompt, max_new_tokens=max_new_tokens, temperature=temperature, system=system,
                       raw=raw, threads=threads, write=lambda s: (o.write(s), o.flush()),
                       warn=lambda s: click.echo(s, file=e), conversation=conversation,
                       enable_thinking=enable_thinking)
    click.echo(file=o)
    rate = stats.get("decode_tok_s")
    click.echo(f"[{stats['generated_tokens']} tokens, {rate or 0:.1f} tok/s decode, "
               f"{stats['prompt_tokens']} prompt tokens]", file=e)


if __name__ == "__main__":
    main()
