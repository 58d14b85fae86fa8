"""The `mlx-spec` command: chat, generate, models, convert, bench, doctor.

A thin front end: every token comes from Pair.stream; this module parses options, loads the
pair, prints, and turns user errors (SpecError) into one line plus a hint with exit code 1.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

import mlx_spec  # first: puts OpenBLAS in front of MLX before mlx.core is imported
from mlx_spec.errors import SpecError

DEBUG_ENV = "MLX_SPEC_DEBUG"
K_LIMIT = 16


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _print_error(message: str, hint: str = "") -> None:
    from mlx_spec.render import use_color

    red = use_color(sys.stderr)
    typer.echo(("\x1b[31merror:\x1b[0m " if red else "error: ") + message, err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)


def _framework_exceptions() -> tuple:
    """Exit/abort/usage exceptions of the CLI framework, passed through untouched: typer
    vendors its own click from 0.2x on, older typer uses the click package."""
    import typer.exceptions as te

    found = [typer.Exit, typer.Abort] + [getattr(te, n) for n in ("TyperException",) if hasattr(te, n)]
    try:
        import click

        found += [click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit]
    except ImportError:
        pass
    return tuple(found)


class _FriendlyErrors(TyperGroup):
    """Wraps every command (mounted sub-apps included): SpecError -> 'error:/hint:' and exit 1,
    Ctrl-C -> exit 130, anything unexpected -> one line; tracebacks only with MLX_SPEC_DEBUG=1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _framework_exceptions():
            raise
        except SpecError as err:
            if _debug():
                traceback.print_exc()
            _print_error(err.message, err.hint)
            ctx.exit(1)
        except KeyboardInterrupt:
            if _debug():
                traceback.print_exc()
            typer.echo("", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader left (`| head`): stop quietly. Point stdout at devnull so that the
            # flush at exit finds no broken pipe either (the Python docs' recipe), and exit
            # 141 = 128 + SIGPIPE, the status of a tool that SIGPIPE ended (cat, yes), so
            # that `set -o pipefail` scripts see what they see with those.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as err:
            if _debug():
                raise
            _print_error(f"unexpected {type(err).__name__}: {err}",
                         f"run again with {DEBUG_ENV}=1 for the traceback, and please report it")
            ctx.exit(1)


app = typer.Typer(
    cls=_FriendlyErrors,
    name="mlx-spec",
    help="Lossless speculative decoding on MLX: a small draft model (or n-gram lookup) proposes "
         "tokens, the target verifies them in one pass.\n\n"
         "Examples:\n\n"
         "  mlx-spec chat\n\n"
         "  mlx-spec generate \"Write quicksort in Python\" --max-tokens 200\n\n"
         "  mlx-spec models list\n\n"
         "  mlx-spec doctor",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        import mlx.core as mx

        try:
            import mlx_lm

            lm = mlx_lm.__version__
        except (ImportError, AttributeError):
            lm = "not installed"
        typer.echo(f"mlx-spec {mlx_spec.__version__} (mlx {mx.__version__}, mlx-lm {lm})")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False):
    """Lossless speculative decoding on MLX."""


# -- shared options -----------------------------------------------------------------------
M, D, S = "Model", "Drafting", "Sampling"
PairOpt = Annotated[Optional[str], typer.Option(
    "--pair", "-p", help="A pair from models.toml (`mlx-spec models list`); default: the "
    "file's default pair.", rich_help_panel=M)]
TargetOpt = Annotated[Optional[str], typer.Option(
    "--target", "-t", help="Target model: a directory, a Hugging Face repo id or a converted "
    "name (instead of --pair).", rich_help_panel=M)]
DraftOpt = Annotated[Optional[str], typer.Option(
    "--draft", "-d", help="Draft model reference, or 'ngram' for draft-free prompt lookup.",
    rich_help_panel=M)]
NoDraftOpt = Annotated[bool, typer.Option(
    "--no-draft", help="Plain decoding with the target alone.", rich_help_panel=M)]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="Weights dtype: float32 | float16 | bfloat16 (default: float32 on CPU, the "
    "checkpoint's own on Metal/CUDA).", rich_help_panel=M)]
KOpt = Annotated[Optional[int], typer.Option(
    "--k", "-k", help=f"Fixed number of draft tokens per round (1-{K_LIMIT}).", rich_help_panel=D)]
AdaptiveOpt = Annotated[bool, typer.Option(
    "--adaptive", help="Choose k each round from the measured costs and acceptance (default).",
    rich_help_panel=D)]
KMaxOpt = Annotated[int, typer.Option(help="Largest k the adaptive policy may choose.",
                                      rich_help_panel=D)]
TempOpt = Annotated[float, typer.Option("--temp", help="Temperature; 0 is greedy.",
                                        rich_help_panel=S)]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep the smallest "
                                        "set with this much probability (1 = off).", rich_help_panel=S)]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).",
                                      rich_help_panel=S)]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Drop tokens below this fraction of the "
                                        "top token's probability (0 = off).", rich_help_panel=S)]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed for sampling.", rich_help_panel=S)]
RepOpt = Annotated[Optional[float], typer.Option(
    "--repetition-penalty", help="Penalise tokens already in the context (e.g. 1.1).",
    rich_help_panel=S)]
InvariantOpt = Annotated[bool, typer.Option(
    "--invariant/--rejection", help="Sample drafter-invariantly (default): with --seed, the text is "
    "plain sampling's with that seed, whatever the draft, k or machine; or accept by rejection "
    "sampling (the same distribution; the text at a seed depends on what was drafted).",
    rich_help_panel=S)]
SystemOpt = Annotated[Optional[str], typer.Option(
    "--system", help="System prompt (used with the chat template).", rich_help_panel=S)]


def _check_options(*, max_tokens, temp, top_p, top_k, min_p, repetition_penalty, seed=None,
                   k=None, adaptive=False, k_max=15, no_draft=False, draft=None, pair=None,
                   target=None) -> None:
    """Reject bad values before anything loads (loading a 7B model takes a while)."""
    def bad(message: str, hint: str) -> None:
        raise SpecError(message, hint)

    if max_tokens < 1:
        bad(f"--max-tokens must be at least 1, got {max_tokens}", "e.g. --max-tokens 256")
    if not math.isfinite(temp) or temp < 0:
        bad(f"--temp must be 0 or more, got {temp}", "0 for greedy decoding, e.g. 0.7 for sampling")
    if not 0 < top_p <= 1:
        bad(f"--top-p must be in (0, 1], got {top_p}", "e.g. --top-p 0.9 (1 turns it off)")
    if top_k < 0:
        bad(f"--top-k must be 0 or more, got {top_k}", "e.g. --top-k 40 (0 turns it off)")
    if not 0 <= min_p < 1:
        bad(f"--min-p must be in [0, 1), got {min_p}", "e.g. --min-p 0.05 (0 turns it off)")
    if repetition_penalty is not None and not repetition_penalty > 0:
        bad(f"--repetition-penalty must be positive, got {repetition_penalty}", "e.g. 1.1")
    if seed is not None and seed < 0:
        bad(f"--seed must be 0 or more, got {seed}", "e.g. --seed 1")
    if k is not None and adaptive:
        bad("--k and --adaptive both given", "--k N fixes the draft length, --adaptive chooses it")
    if k is not None and not 1 <= k <= K_LIMIT:
        bad(f"--k must be from 1 to {K_LIMIT}, got {k}", "for plain decoding use --no-draft")
    if not 1 <= k_max <= K_LIMIT:
        bad(f"--k-max must be from 1 to {K_LIMIT}, got {k_max}", "e.g. --k-max 8")
    if draft is not None and not draft.strip():  # as resolve.py says of an empty --target
        bad("empty model reference", "give --draft a local directory, an org/name repo id or "
            "'ngram', or use --no-draft")
    if no_draft and draft:
        bad("--draft and --no-draft both given", "drop one of them")
    if no_draft and (k is not None or adaptive):
        bad("--k/--adaptive need a draft, but --no-draft was given", "drop --no-draft or --k")
    check_model_options(pair, target)


def check_model_options(pair, target) -> None:
    """--pair or --target, not both (generate, chat and bench)."""
    if pair and target:
        raise SpecError("--pair and --target both given",
                        "name a pair from models.toml, or give --target (and optionally --draft)")


def _json(obj) -> str:
    """Indented JSON with lists of numbers (token ids, rates) kept on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    number = r"-?[0-9][0-9.eE+-]*"
    return re.sub(rf"\[\s*({number}(?:,\s*{number})*)\s*\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


@contextmanager
def _loading(label: str):
    """A spinner on stderr while models load (and k is calibrated); silent when piped."""
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(label):
            yield
    else:
        yield


def _load(pair, target, draft, no_draft, k, k_max, dtype):
    from mlx_spec.pair import load_pair
    from mlx_spec.registry import load_registry

    if target is None:
        registry = load_registry()
        ref = registry.get(pair).name  # unknown pair: one error listing the known names
    else:
        ref = target
    with _loading(f"loading {ref} (the first run on this machine also calibrates k)…"):
        return load_pair(ref, "none" if no_draft else draft, k=k, k_max=k_max, dtype=dtype)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# -- commands ------------------------------------------------------------------------------
@app.command()
def chat(
    pair: PairOpt = None, target: TargetOpt = None, draft: DraftOpt = None,
    no_draft: NoDraftOpt = False, dtype: DtypeOpt = None,
    k: KOpt = None, adaptive: AdaptiveOpt = False, k_max: KMaxOpt = 15,
    temp: TempOpt = 0.7, top_p: TopPOpt = 1.0, top_k: TopKOpt = 0, min_p: MinPOpt = 0.0,
    seed: SeedOpt = None, repetition_penalty: RepOpt = None, system: SystemOpt = None,
    invariant: InvariantOpt = True,
    max_tokens: Annotated[int, typer.Option(
        help="Most tokens per reply (less when the context is nearly full).",
        rich_help_panel=S)] = 1024,
):
    """Chat with a draft/target pair: streamed replies, a stats line after each.

    Both KV caches are kept across turns, so each turn only prefills what is new. Commands:
    /stats, /reset, /system TEXT, /help, /exit. Ctrl-C stops a reply (the conversation stays);
    Ctrl-D leaves. Piped stdin works: one message per line. A model without a chat template
    is chatted with as plain text: each line is appended and the model continues it.

    Examples:

      mlx-spec chat

      mlx-spec chat --pair qwen2.5-coder-7b --temp 0

      mlx-spec chat --target ./stories260K --draft ./stories260K

      printf 'Hi!\\n/stats\\n' | mlx-spec chat --draft ngram
    """
    from mlx_spec.chat import ChatIO, ChatSession, Sampling, run_chat
    from mlx_spec.text import readable

    _check_options(max_tokens=max_tokens, temp=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                   repetition_penalty=repetition_penalty, seed=seed, k=k, adaptive=adaptive,
                   k_max=k_max, no_draft=no_draft, draft=draft, pair=pair, target=target)
    loaded = _load(pair, target, draft, no_draft, k, k_max, dtype)
    sampling = Sampling(max_tokens=max_tokens, temperature=temp, top_k=top_k, top_p=top_p,
                        min_p=min_p, seed=seed, repetition_penalty=repetition_penalty,
                        invariant=invariant)
    session = ChatSession(loaded, sampling=sampling, system=system and readable(system))
    _lenient_stdin()
    code = run_chat(session, ChatIO(sys.stdin, sys.stdout, sys.stderr), debug=_debug())
    raise typer.Exit(code)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt, or - to read it from stdin.")],
    pair: PairOpt = None, target: TargetOpt = None, draft: DraftOpt = None,
    no_draft: NoDraftOpt = False, dtype: DtypeOpt = None,
    k: KOpt = None, adaptive: AdaptiveOpt = False, k_max: KMaxOpt = 15,
    chat_template: Annotated[Optional[bool], typer.Option(
        "--chat/--raw", help="Wrap the prompt in the target's chat template (default when it "
        "has one) or send the text as-is.", rich_help_panel=S)] = None,
    temp: TempOpt = 0.0, top_p: TopPOpt = 1.0, top_k: TopKOpt = 0, min_p: MinPOpt = 0.0,
    seed: SeedOpt = None, repetition_penalty: RepOpt = None, system: SystemOpt = None,
    invariant: InvariantOpt = True,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.",
                                            rich_help_panel=S)] = 256,
    stop: Annotated[Optional[List[str]], typer.Option(
        help="Stop at this text (repeatable); it is not printed.", rich_help_panel=S)] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print {text, tokens, finish_reason, stats, target, draft} as JSON.")] = False,
    show_stats: Annotated[bool, typer.Option(
        "--stats", help="Print the full statistics block (stderr) instead of one line.")] = False,
    trace: Annotated[Optional[Path], typer.Option(
        help="Write every round (source, k, accepted, text, price in plain steps) to this file, "
        "one JSON line each; print what each source earned per step.")] = None,
    quick_start: Annotated[bool, typer.Option(
        "--quick-start", help="First round without the draft model (plain or an n-gram "
        "guess), before the draft reads the prompt (as chat does): sooner, for about one round's gain.", rich_help_panel=S)] = False,
):
    """Generate one completion to stdout; statistics go to stderr.

    Examples:

      mlx-spec generate "Write quicksort in Python."

      mlx-spec generate "Once upon a time" --raw --target ./stories260K --draft ngram --k 4

      cat prompt.txt | mlx-spec generate - --temp 0.7 --seed 1 --json

      mlx-spec generate "Write a poem about autumn." --trace rounds.jsonl
    """
    from mlx_spec.render import Painter, k_label, stats_table, summary_line, use_color
    from mlx_spec.text import readable

    if prompt == "-":
        _lenient_stdin()
        prompt = sys.stdin.read()
    prompt, system = readable(prompt), system and readable(system)
    if not prompt.strip():
        raise SpecError("the prompt is empty", "pass the text as an argument, or - with text on stdin")
    _check_options(max_tokens=max_tokens, temp=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                   repetition_penalty=repetition_penalty, seed=seed, k=k, adaptive=adaptive,
                   k_max=k_max, no_draft=no_draft, draft=draft, pair=pair, target=target)
    if trace is not None:
        _check_trace_path(trace)
    loaded = _load(pair, target, draft, no_draft, k, k_max, dtype)
    err = _stderr_console()
    has_template = bool(loaded.tokenizer.has_chat_template)
    if chat_template and not has_template and not json_out:
        err.print("note: the target has no chat template; sending the prompt as raw text")
    use_template = has_template if chat_template is None else (chat_template and has_template)

    ids = loaded.encode(prompt, chat=use_template, system=system)  # Pair.stream checks its length
    painter = Painter(loaded.tokenizer, use_color(sys.stdout) and not json_out)
    painter.start(ids)  # per-token colouring decodes after the prompt's last tokens
    parts, tokens, finish = [], [], None
    try:
        for step in loaded.stream(ids, max_tokens=max_tokens, temperature=temp, top_k=top_k,
                                  top_p=top_p, min_p=min_p, seed=seed,
                                  repetition_penalty=repetition_penalty, stop=stop or (),
                                  trace=trace is not None, quick_start=quick_start,
                                  invariant=invariant):
            parts.append(step.text)
            tokens += step.tokens
            finish = step.finish_reason
            if not json_out:
                sys.stdout.write(painter.paint(step.text, step.tokens, step.drafted))
                sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the reader left (`| head`)
        if trace is not None:  # the rounds done so far are what the trace is for: keep them
            typer.echo("", err=True)
            _write_trace(loaded, loaded.last_stats, trace, err, partial=True)
        raise
    stats = loaded.last_stats
    text = "".join(parts)
    if not json_out:
        typer.echo("")
    if trace is not None:
        _write_trace(loaded, stats, trace, err)
    if json_out:
        typer.echo(_json({"text": text, "tokens": tokens, "finish_reason": finish,
                          "stats": stats.to_dict(), "target": loaded.target_name,
                          "draft": loaded.draft_name}))
        return
    if show_stats:
        err.print(stats_table({"generate": stats}))
    else:
        err.print(summary_line(stats, k_label(loaded)),
                  style="dim", markup=False, soft_wrap=True)


def _lenient_stdin() -> None:
    """Read stdin's bytes that are not UTF-8 as surrogates (as Python does in the C locale)
    rather than fail in a UTF-8 locale; text.readable then makes them U+FFFD."""
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")


def _check_trace_path(path: Path) -> None:
    """Before loading, check that the trace can be written, touching nothing: the file is
    written once the run has rounds to put in it, and an existing one must survive a run
    that fails."""
    def bad(why: str) -> None:
        raise SpecError(f"cannot write the trace to {path}: {why}", "give --trace a writable file "
                        "path in an existing folder")

    folder = path.parent
    if path.is_dir():
        bad("it is a folder")
    if not folder.is_dir():
        bad(f"the folder {folder} does not exist")  # not created: a typo should not make folders
    if not os.access(path if path.exists() else folder, os.W_OK):
        bad("permission denied")


def _write_trace(loaded, stats, path: Path, err, partial: bool = False) -> None:
    from mlx_spec.trace import source_totals, totals_lines, trace_records, write_trace

    records = trace_records(stats, loaded.tokenizer, getattr(loaded.engine.policy, "calibration", None)) if stats else []
    if partial and not records:
        err.print(f"trace: stopped before the first round; {path} not written", markup=False, highlight=False)
        return
    try:
        write_trace(records, path)
    except OSError as e:
        raise SpecError(f"cannot write the trace to {path}: {e.strerror or e}", "give --trace a writable file path")
    for line in totals_lines(source_totals(records)):
        err.print(line, markup=False, highlight=False)
    note = " (stopped early: a partial trace)" if partial else ""
    err.print(f"trace: {len(records)} rounds written to {path}{note}", markup=False, highlight=False)


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False):
    """Check this machine: backend, chip, memory, BLAS, versions, caches, local models.

    Reports the MLX backend (Metal / CUDA / CPU), the chip with its GPU cores and memory
    bandwidth (macOS) or the CPU model (Linux), the BLAS MLX uses on Linux, the versions of
    mlx and mlx-lm, where mlx-spec keeps models and calibration, and which pairs are present.

    Examples:

      mlx-spec doctor

      mlx-spec doctor --json
    """
    from rich.console import Console

    from mlx_spec.doctor import collect, render

    report = collect()
    if json_out:
        typer.echo(_json(report))
    else:
        render(report, Console(highlight=False))


def _mount_subcommands() -> None:
    """Model management (models_cli.py) and benchmarks (bench_cli.py) are mounted here."""
    from mlx_spec.bench_cli import bench_app
    from mlx_spec.models_cli import convert_command, models_app

    app.add_typer(models_app, name="models")
    app.command("convert")(convert_command)
    app.add_typer(bench_app, name="bench")


_mount_subcommands()
