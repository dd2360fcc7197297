"""Command line: options -> one library call -> progress and a summary. No logic lives here.

    mobilellm-export --model SOURCE --target android --quant 4bit [--out DIR]
    mobilellm-export inspect SOURCE
    mobilellm-export generate SOURCE --prompt "..."
"""

from __future__ import annotations

import errno
import functools
import sys

import click

from .errors import UserError


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def friendly(fn):
    """User-caused failures end in one line and exit 2; Ctrl-C in one line and exit 130."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written", 130)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                _fail("disk full; nothing was written")
            if e.errno in (errno.EACCES, errno.EROFS, errno.ENOENT):
                _fail(f"{e.strerror}: {e.filename}")
            raise

    return wrapper


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", help="Preset, smollm2-135m, HF directory, .gguf file or hub id.")
@click.option("--target", type=click.Choice(["android"]), default="android", show_default=True)
@click.option("--quant", default="4bit", show_default=True, help="Recipe name (quant_recipes/) or .toml path.")
@click.option("--tokenizer", help="tokenizer.json (or its folder) when the source has none.")
@click.option("--out", default="out", show_default=True, type=click.Path(file_okay=False))
@click.option("--max-context", default=2048, show_default=True, type=click.IntRange(16, 1 << 17))
@click.option("--max-seq-len", default=128, show_default=True, type=click.IntRange(1, 4096),
              help="Longest prefill chunk the artifact takes in one call.")
@click.option("--eval-text", type=click.Path(exists=True, dir_okay=False), help="Text for parity (default: built-in).")
@click.option("--eval-tokens", default=4096, show_default=True, type=click.IntRange(16),
              help="Tokens of the eval text scored (windows of 512). The recipe thresholds are set on 4096.")
@click.option("--no-verify", is_flag=True, help="Skip parity and latency checks.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE",
              help="Override a recipe threshold, e.g. --threshold kl_mean=0.3")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@friendly
def main(ctx, model, **opts):
    """Export small LLMs (MobileLLM-R1, MobileLLM, Llama, SmolLM2) to verified on-device bundles."""
    if ctx.invoked_subcommand is not None:
        return
    if not model:
        click.echo(ctx.get_help())
        return
    from .pipeline import export_command

    sys.exit(export_command(model, **opts))


@main.command()
@click.argument("source")
@click.option("--tokenizer", help="tokenizer.json (or its folder) when the source has none.")
@friendly
def inspect(source, tokenizer):
    """Architecture, parameter count, tokenizer, context and estimated artifact sizes."""
    from .describe import describe
    from .sources import load

    click.echo(describe(load(source, tokenizer=tokenizer, weights=False)))


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
@friendly
def generate(source, prompt, tokenizer, max_new_tokens, temperature, top_p, seed, system, raw, dtype):
    """Float generation with the reference model (streams text, prints tok/s)."""
    from .float_chat import stream_generate
    from .generate import Sampling
    from .sources import load

    stats = stream_generate(load(source, tokenizer=tokenizer), prompt, max_new_tokens,
                            Sampling(temperature, top_p, seed), system=system, raw=raw, dtype=dtype,
                            write=lambda s: click.echo(s, nl=False))
    click.echo()
    click.echo(f"[{stats['new_tokens']} tokens, prefill {stats['prefill_tok_s']:.1f} tok/s, "
               f"decode {stats['decode_tok_s']:.1f} tok/s]", err=True)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--eval-text", type=click.Path(exists=True, dir_okay=False), help="Text for parity (default: built-in).")
@click.option("--eval-tokens", default=4096, show_default=True, type=click.IntRange(16),
              help="Tokens of the eval text scored (windows of 512). The recipe thresholds are set on 4096.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE")
@click.option("--no-latency", is_flag=True)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def verify(bundle, eval_text, eval_tokens, thresholds, no_latency, quiet, as_json):
    """Re-check an existing bundle: sha256 of every file, then parity and latency."""
    from .pipeline import verify_command

    sys.exit(verify_command(bundle, eval_text=eval_text, eval_tokens=eval_tokens, thresholds=thresholds,
                            quiet=quiet, as_json=as_json, with_latency=not no_latency))


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--prompt", required=True)
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--temperature", type=click.FloatRange(0), help="Default: the bundle's generation default.")
@click.option("--system", help="System prompt, or 'math' / 'code' for the MobileLLM-R1 prompts.")
@click.option("--raw", is_flag=True, help="Do not apply the chat template.")
@friendly
def run(bundle, prompt, max_new_tokens, temperature, system, raw):
    """Generate through the ExecuTorch LLM runner, exactly as the apps do."""
    from .run_bundle import run_bundle

    stats = run_bundle(bundle, prompt, max_new_tokens=max_new_tokens, temperature=temperature, system=system,
                       raw=raw, write=lambda s: click.echo(s, nl=False))
    click.echo()
    click.echo(f"[{stats.get('generated_tokens', '?')} tokens, {stats.get('decode_tok_s', 0):.1f} tok/s decode]",
               err=True)


if __name__ == "__main__":
    main()
