"""`mlx-spec bench`, `bench show`, `bench compare` and `bench merge`: the command-line face of
bench.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from mlx_spec.errors import SpecError

bench_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Benchmark a pair: plain decoding vs mlx-spec vs mlx-lm's speculative decoding, "
    "interleaved in one run.\n\nExamples:\n\n  mlx-spec bench --pair qwen2.5-coder-1.5b --prompts-per-category 2\n\n"
    "  mlx-spec bench compare m3pro.json m4.json --out compare.md --plot compare.png\n\n"
    "  mlx-spec bench merge greedy.json t07.json --out result.json\n\n"
    "  mlx-spec bench show result.json --md result.md",
)

MD_HELP = "Also write the summary as markdown (tables of arms, costs and sources)."


def _report(result: dict, md: Optional[Path], plot: Optional[Path], prompts: bool = False) -> None:
    """Print a result's tables (with `prompts`, one row per prompt too); write its markdown
    summary and plot where asked."""
    from mlx_spec.bench_report import plot_result, print_prompts, print_summary, prompts_markdown, summary_markdown

    print_summary(result)
    if prompts:
        print_prompts(result)
    if md:
        text = summary_markdown(result).rstrip("\n") + "\n"
        _write_text(md, text + ("\n" + prompts_markdown(result) if prompts else ""))
        typer.echo(f"markdown written to {md}", err=True)
    if plot:
        typer.echo(f"plot written to {plot_result(result, plot)}", err=True)


def _write_text(path: Path, text: str) -> None:
    """Write a file, making its folders as the result file and the plot do."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _plot_formats() -> list[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def _check_output(path: Optional[Path], option: str) -> None:
    """Refuse an output path before the work whose result it would take: a folder, a place no
    file can be written, a plot format matplotlib cannot write. Creates and truncates nothing:
    folders still missing are made at the end, as before, and writing is tried with a
    temporary file removed at once (permission bits alone say nothing to root, or of /proc)."""
    import os
    import tempfile

    if path is None:
        return
    path = Path(path)
    if option == "--plot" and path.suffix.lower().lstrip(".") not in _plot_formats():
        raise SpecError(f"--plot {path}: matplotlib writes no {path.suffix or 'file without an extension'}",
                        f"end it with a format matplotlib writes, e.g. .png, .pdf or .svg ({', '.join(_plot_formats())})")
    if path.is_dir():
        raise SpecError(f"{option} {path} is a folder", "give the path of a file (in that folder, say)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest folder that exists: the missing ones are made in it
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        if path.exists():
            open(path, "ab").close()  # appends nothing: the file keeps its contents
        else:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".mlx-spec-probe-")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise SpecError(f"cannot write {option} {path}: {e.strerror or e}", "give a file in a folder you can write")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SpecError(f"bad list of numbers {text!r}", "write them comma-separated, e.g. 0,0.7")


def _names(text: str) -> list[str]:
    """The non-empty items of a comma-separated option, stripped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def _positive_ints(text: str, option: str, example: str) -> tuple[int, ...]:
    items = _names(text)
    if not all(x.isdigit() and int(x) > 0 for x in items):
        raise SpecError(f"{option} takes positive whole numbers, got {text!r}", f"e.g. {option} {example}")
    return tuple(int(x) for x in items)


@bench_app.callback()
def run(
    ctx: typer.Context,
    pair: Optional[str] = typer.Option(None, "--pair", "-p", help="Pair name from models.toml (default: the default pair)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target model reference (instead of --pair)."),
    draft: Optional[str] = typer.Option(None, "--draft", "-d", help="Draft model reference (with --target)."),
    categories: str = typer.Option("code,math,open,edit", help="Prompt categories to run."),
    prompts_per_category: Optional[int] = typer.Option(None, min=1, help="Use the first N prompts of each category."),
    skip_prompts: int = typer.Option(0, min=0, help="Skip the first N prompts of each category (to extend an earlier run; join the two with `bench merge`)."),
    prompt_ids: Optional[str] = typer.Option(None, "--prompt-ids", help="Run these prompts alone, by id, comma-separated (e.g. poem,quicksort: to rerun one prompt of a result), instead of --prompts-per-category / --skip-prompts."),
    prompts_dir: Optional[Path] = typer.Option(None, help="Folder of <category>.json prompt sets."),
    max_tokens: int = typer.Option(128, min=1, help="New tokens per run (same for every arm)."),
    temps: str = typer.Option("0,0.7", help="Temperatures, comma-separated."),
    repeats: int = typer.Option(1, min=1, help="Interleaved repeats per prompt."),
    k: int = typer.Option(3, min=1, help="k of the fixed-k mlx-spec arm."),
    mlx_lm_k: str = typer.Option("3,5", help="num_draft_tokens values for the mlx-lm arms."),
    raw: bool = typer.Option(False, "--raw", help="Send prompts without the chat template."),
    chain_arm: bool = typer.Option(False, "--chain-arm", help="Add adaptive mlx-spec verifying the draft's chain alone (no token tree)."),
    recalibrate: bool = typer.Option(True, "--recalibrate/--cached-costs", help="Measure the pair's costs (a plain step, a draft step, verifications) anew before the arms run, about 40 s for a 1.5B/0.5B pair on a CPU, and keep them (default), or plan with the costs cached by an earlier run on this machine."),
    quick_arm: bool = typer.Option(False, "--quick-arm", help="Add adaptive mlx-spec with chat's quick start (first round without the draft, its prefill after it)."),
    mlx_lm_plain: bool = typer.Option(False, "--mlx-lm-plain", help="Add mlx-lm's own decoding without a draft, to check the plain baseline against it."),
    invariant: bool = typer.Option(True, "--invariant/--rejection", help="Every mlx-spec arm, plain included, samples drafter-invariantly (default): at temperature > 0 too each arm's reply is plain's token for token (checked), so a prompt's speed-ups compare the same text; or they accept by rejection sampling (each arm its own text)."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (default benchmarks/results/bench-<time>.json)."),
    plot: Optional[Path] = typer.Option(None, help="Also write a PNG of speed-ups per category."),
    md: Optional[Path] = typer.Option(None, help=MD_HELP),
):
    """Run the benchmark suite and write a result file stamped with this machine."""
    if ctx.invoked_subcommand:
        return
    from datetime import datetime

    from rich.console import Console

    from mlx_spec.bench import (CATEGORIES, PROMPTS_DIR, Bench, SuiteInterrupted, default_arms, load_prompts,
                                run_suite, write_result)
    from mlx_spec.cli import K_LIMIT, check_model_options
    from mlx_spec.loading import load_model
    from mlx_spec.pair import check_tokenizers
    from mlx_spec.platform import software
    from mlx_spec.registry import load_registry

    stamp = software()  # the checkout as the code was imported, before minutes of loading
    console = Console(stderr=True)
    # everything a user can get wrong is refused here, before minutes of loading and measuring
    # that a late error would throw away
    cats = _names(categories)
    if not cats:
        raise SpecError(f"no categories given in --categories {categories!r}", f"choose from {', '.join(CATEGORIES)}")
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise SpecError(f"unknown categories: {', '.join(unknown)}", f"choose from {', '.join(CATEGORIES)}")
    check_model_options(pair, target)
    if not 1 <= k <= K_LIMIT:
        raise SpecError(f"--k must be from 1 to {K_LIMIT}, got {k}", "--k sets the fixed-k mlx-spec arm, e.g. --k 3")
    mlx_ks = _positive_ints(mlx_lm_k, "--mlx-lm-k", "3,5")  # none: no mlx-lm arms
    temperatures = _floats(temps)
    if not temperatures:
        raise SpecError(f"no temperatures given in --temps {temps!r}", "e.g. --temps 0,0.7")
    if not all(math.isfinite(t) and t >= 0 for t in temperatures):
        raise SpecError(f"--temps must be 0 or more, got {temps!r}", "0 for greedy decoding, e.g. --temps 0,0.7")
    if draft in ("ngram", "none"):
        # every mlx-spec arm already adds the n-gram proposer beside the draft model; the mlx-lm
        # arms need a draft model of their own
        raise SpecError(f"bench compares a draft model, not --draft {draft}",
                        "the mlx-spec arms always add the n-gram proposer to the draft model: give --draft a model, or a --pair")
    if target is None:
        spec = load_registry().get(pair)
        target, draft = spec.target, draft or spec.draft
    if not draft:
        raise SpecError("bench needs a draft model", "give --draft REF or a --pair")
    ids = None
    if prompt_ids is not None:
        ids = _names(prompt_ids)
        if not ids:
            raise SpecError(f"no prompt ids given in --prompt-ids {prompt_ids!r}", "e.g. --prompt-ids poem,quicksort")
        if prompts_per_category is not None or skip_prompts:
            raise SpecError("--prompt-ids picks the prompts itself",
                            "give --prompt-ids, or --prompts-per-category / --skip-prompts, not both")
    prompts = load_prompts(cats, prompts_per_category, prompts_dir or PROMPTS_DIR, skip=skip_prompts, ids=ids)
    out = out or PROMPTS_DIR.parent / "results" / f"bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    for path, option in ((out, "--out"), (plot, "--plot"), (md, "--md")):
        _check_output(path, option)
    with console.status("loading models…"):
        loaded_target, loaded_draft = load_model(target), load_model(draft)
    try:  # generate's refusal, less its hint of --draft ngram, which bench does not take
        check_tokenizers(loaded_target.tokenizer, loaded_draft.tokenizer, loaded_target.name, loaded_draft.name)
    except SpecError as e:
        raise SpecError(e.message, "pick a draft from the same model family (same tokenizer)") from None
    with console.status("measuring what a step costs on this machine…" if recalibrate else "loading costs…"):
        bench = Bench(loaded_target, loaded_draft, default_arms(k, mlx_ks, chain=chain_arm, quick=quick_arm,
                                                         mlx_lm_plain=mlx_lm_plain, invariant=invariant),
                      max_tokens=max_tokens, chat=not raw, recalibrate=recalibrate)
    try:
        with console.status("warming up and measuring…") as status:
            # a spinner on a terminal; one line per run in a log
            report = status.update if console.is_terminal else console.print
            result = run_suite(bench, prompts, temperatures, repeats, on_progress=report, stamp=stamp)
    except SuiteInterrupted as stop:  # keep the prompts every arm finished; Ctrl-C still exits 130
        kept = len(stop.result["runs"]) // len(bench.arms)
        planned = sum(map(len, prompts.values())) * len(temperatures) * repeats
        write_result(stop.result, out)
        console.print(f"interrupted: kept the {kept} of {planned} comparisons every arm finished "
                      f"({len(stop.result['runs'])} runs) in {out}, marked \"interrupted\"",
                      highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(130)
    except KeyboardInterrupt:
        console.print("interrupted before every arm had finished a prompt: no result written",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    write_result(result, out)
    _report(result, md, plot)
    console.print(f"result written to {out}")
    if result["greedy_mismatches"]:
        raise SpecError(
            f"outputs that must be plain decoding's (greedy, or sampled with --invariant) differed in "
            f"{len(result['greedy_mismatches'])} run(s)",
            "a speed-up with different output is a bug: see greedy_mismatches in the result file",
        )


@bench_app.command()
def compare(
    results: List[Path] = typer.Argument(..., help="Result files written by `mlx-spec bench`."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated names, one per file (default: chip names)."),
    out: Optional[Path] = typer.Option(None, help="Write the markdown table here."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG comparing speed-ups."),
):
    """Put several results side by side (e.g. an M3 Pro against an M4).

    Example: mlx-spec bench compare m3pro.json m4.json --labels "M3 Pro,M4" --plot cmp.png
    """
    from mlx_spec.bench import read_result
    from mlx_spec.bench_report import compare_markdown, plot_compare

    for path, option in ((out, "--out"), (plot, "--plot")):
        _check_output(path, option)
    loaded = [read_result(p) for p in results]
    names = [s.strip() for s in labels.split(",")] if labels else [r["machine"].get("chip", p.stem) for r, p in zip(loaded, results)]
    if len(names) != len(loaded):
        raise SpecError(f"{len(names)} labels for {len(loaded)} files", "give one label per result file")
    table = compare_markdown(loaded, names)
    typer.echo(table)
    if out:
        _write_text(out, table)
    if plot:
        plot_compare(loaded, names, plot)


@bench_app.command()
def merge(
    results: List[Path] = typer.Argument(..., help="Result files of one suite, run at different temperatures or over different prompts."),
    out: Path = typer.Option(..., help="Write the merged result here."),
    plot: Optional[Path] = typer.Option(None, help="Also write a PNG of speed-ups per category."),
    md: Optional[Path] = typer.Option(None, help=MD_HELP),
    replace: bool = typer.Option(False, "--replace", help="A prompt a later file ran again at a temperature replaces its runs in the earlier files (a re-measure after a change), instead of being refused."),
):
    """One result from the parts of a suite run as separate commands (same machine and models):
    the greedy and the sampled halves, or the same suite over some prompts and then others.

    Example: mlx-spec bench merge greedy.json t07.json --out result.json --plot result.png
    """
    from mlx_spec.bench import merge_results, read_result, write_result

    for path, option in ((out, "--out"), (plot, "--plot"), (md, "--md")):
        _check_output(path, option)
    merged = merge_results([read_result(p) for p in results], replace=replace)
    write_result(merged, out)
    _report(merged, md, plot)


@bench_app.command()
def show(
    result: Path = typer.Argument(..., help="A result file written by `mlx-spec bench`."),
    md: Optional[Path] = typer.Option(None, help=MD_HELP),
    plot: Optional[Path] = typer.Option(None, help="Also write a PNG of speed-ups per category."),
    prompts: bool = typer.Option(False, "--prompts", help="Add a table with one row per prompt: every arm's speed-up and τ (to the terminal and --md)."),
):
    """Print a recorded result's tables again (summary, costs, where the tokens came from).

    Example: mlx-spec bench show benchmarks/results/qwen2.5-coder-1.5b-cpu.json --prompts --md result.md
    """
    from mlx_spec.bench import read_result

    for path, option in ((plot, "--plot"), (md, "--md")):
        _check_output(path, option)
    _report(read_result(result), md, plot, prompts)
