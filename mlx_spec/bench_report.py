"""Turning benchmark results into what people compare: tables (terminal and markdown) and
plots, for one result or several side by side (an M3 Pro against an M4)."""

from __future__ import annotations

import os
from pathlib import Path

from mlx_spec.bench import CATEGORIES, _median
from mlx_spec.errors import SpecError
from mlx_spec.policy import CEILING_ALPHAS, Costs

LOG_WIDTH = 240  # columns of a results table written to a file or a pipe


# the settings line of a result whose mlx-spec arms sampled drafter-invariantly (bench's default)
INVARIANT_NOTE = ("; the mlx-spec arms sampled drafter-invariantly, so every sampled reply of theirs is plain "
                  "decoding's, token for token")


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _split(v) -> str:
    s = v.get("time_split")
    if not s:
        return "—"
    return "/".join(f"{100 * (s[p] or 0):.0f}" for p in ("draft", "verify", "other"))


COSTS_LEAD = ("Costs (calibrated; draft and verification in target steps) and the drafting ceiling "
              f"(speed-up of a draft chain at acceptance α = {CEILING_ALPHAS[0]:g} .. {CEILING_ALPHAS[-1]:g}, best k)")
COST_COLUMNS = ["target step", "draft step", "verify k=3", "verify k=15"] + [f"α={a:g}" for a in CEILING_ALPHAS]
SUMMARY_COLUMNS = ["temp", "category", "arm", "tok/s", "speed-up", "worst prompt", "modeled", "after 1st round", "1st token s",
                   "vs mlx-lm best", "vs mlx-lm same k", "τ", "accept", "k", "draft/verify/other %", "peak GB"]


def summary_rows(result: dict) -> list[list[str]]:
    rows = []
    for temperature, categories in result["summary"].items():
        for category, arms in categories.items():
            for arm, v in arms.items():
                rows.append([
                    temperature, category, arm, _fmt(v["tps"]), _fmt(v["speedup"], ".2f", "×"),
                    _fmt(v.get("min_speedup"), ".2f", "×"), _fmt(v.get("modeled_speedup"), ".2f", "×"),
                    _fmt(v.get("decode_speedup"), ".2f", "×"), _fmt(v.get("first_token"), ".2f"),
                    _fmt(v["vs_mlx_lm_best"], ".2f", "×"), _fmt(v["vs_mlx_lm_same_k"], ".2f", "×"),
                    _fmt(v["tau"]), _fmt(v["acceptance_rate"], ".0%"), _fmt(v["mean_k"], ".1f"),
                    _split(v), _fmt(v["peak_memory_gb"], ".1f"),
                ])
    return rows


def cost_row(calibration: dict | None) -> list[str] | None:
    """The machine's calibrated costs that decide every speculative speed-up, as shares of
    a plain target step (the seconds of one), and the drafting ceiling at a few acceptance
    rates (`Costs.ceiling`: the best k's speed-up of a draft chain, no n-gram, no siblings).
    None without a calibration (a run with no speculative arm)."""
    if not calibration:
        return None
    shares = Costs(**calibration).shares()
    return ([_fmt(shares["target_step"], ".3f", " s"), _fmt(shares["draft_step"], ".2f", "×")]
            + [_fmt(v, ".2f", "×") for v in shares["verify"].values()]
            + [f"{s:.2f}× (k {k})" for s, k in shares["ceiling"].values()])


def costs_markdown(result: dict) -> str:
    """A table of the machine's costs and drafting ceilings, with its lead ("" without a calibration)."""
    row = cost_row(result.get("calibration"))
    if row is None:
        return ""
    return f"{COSTS_LEAD}:\n\n" + markdown_table(COST_COLUMNS, [row]) + "\n"


SOURCES_LEAD = ("Where the mlx-spec arms' tokens came from (per proposer, over the category's prompts: "
                "its share of the rounds, tokens per round, and the share of its drafted tokens the target accepted)")
SOURCE_COLUMNS = ["temp", "category", "arm", "source", "rounds", "τ", "accepted", "drafted"]


def source_rows(result: dict) -> list[list[str]]:
    """Per temperature, category and mlx-spec arm, each source's rounds (share), τ and
    acceptance, summed over the category's prompts from the runs' `by_source` statistics
    (results recorded before it existed have none: no rows). A fixed k's free tail (the
    n-gram's tokens past the k proposed, counted in its source's rounds too) gets a row of its
    own: its tokens and the share accepted."""
    totals: dict[tuple, dict[str, dict[str, float]]] = {}
    tails: dict[tuple, list[int]] = {}
    for run in (r for r in result["runs"] if r.get("kind") == "spec"):
        stats = run.get("stats") or {}
        key = (str(run["temperature"]), run["category"], run["arm"])
        for source, row in (stats.get("by_source") or {}).items():
            total = totals.setdefault(key, {}).setdefault(source, dict.fromkeys(("rounds", "tokens", "drafted", "accepted"), 0))
            for field in total:
                total[field] += row[field]
        if stats.get("tail_proposed"):
            tail = tails.setdefault(key, [0, 0])
            tail[0], tail[1] = tail[0] + stats["tail_proposed"], tail[1] + stats.get("tail_accepted", 0)
    rows = []
    for key, sources in sorted(totals.items()):
        temperature, category, arm = key
        rounds = sum(t["rounds"] for t in sources.values())
        for source, t in sorted(sources.items()):
            rows.append([temperature, category, arm, source, f"{t['rounds']} ({t['rounds'] / rounds:.0%})",
                         f"{t['tokens'] / t['rounds']:.2f}",
                         f"{t['accepted'] / t['drafted']:.0%}" if t["drafted"] else "—", str(t["drafted"])])
        if key in tails:
            proposed, accepted = tails[key]
            rows.append([temperature, category, arm, "free tail", "—", "—", f"{accepted / proposed:.0%}", str(proposed)])
    return rows


PROMPTS_LEAD = ("Per prompt: each arm's speed-up over the baseline (median over repeats) and, for a "
                "speculative arm, its tokens per round (τ); tokens: the baseline's reply length")


def prompt_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per temperature, category and prompt (by temperature and
    category, in the order they ran within), with the baseline's reply length and every other
    arm's speed-up (and τ where it drafts)."""
    baseline = result["settings"]["baseline"]
    arms = [a["name"] for a in result["settings"]["arms"] if a["name"] != baseline]
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for run in result["runs"]:
        key = (str(run["temperature"]), run["category"], run["prompt"])
        cells.setdefault(key, {}).setdefault(run["arm"], []).append(run)
    order = {c: i for i, c in enumerate(CATEGORIES)}
    keys = sorted(cells, key=lambda k: (float(k[0]), order.get(k[1], len(order))))  # stable: run order within
    rows = []
    for temperature, category, prompt in keys:
        by_arm = cells[temperature, category, prompt]
        base = by_arm.get(baseline) or [{}]
        row = [temperature, category, prompt, _fmt(base[0].get("tokens"), "d")]
        for arm in arms:
            runs = by_arm.get(arm)
            if not runs:
                row.append("—")
                continue
            speedup = _median([r.get("speedup") for r in runs])
            tau = _median([(r.get("stats") or {}).get("tau") for r in runs if r.get("kind") != "plain"])
            row.append(_fmt(speedup, ".2f", "×") + (f" (τ {tau:.1f})" if tau is not None and tau != 1.0 else ""))
        rows.append(row)
    return ["temp", "category", "prompt", "tokens", *arms], rows


def prompts_markdown(result: dict) -> str:
    header, rows = prompt_rows(result)
    return f"{PROMPTS_LEAD}:\n\n" + markdown_table(header, rows) + "\n"


def print_prompts(result: dict, console=None) -> None:
    """The terminal form of `prompts_markdown`."""
    header, rows = prompt_rows(result)
    (console or table_console()).print(_rich_table("per prompt: speed-up over the baseline (τ)", header, rows,
                                                   left=("temp", "category", "prompt")))


def sources_markdown(result: dict) -> str:
    """The table of `source_rows` with its lead ("" when the runs have no per-source statistics)."""
    rows = source_rows(result)
    return f"{SOURCES_LEAD}:\n\n" + markdown_table(SOURCE_COLUMNS, rows) + "\n" if rows else ""


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine_line(result: dict) -> str:
    m = result["machine"]
    bw = f", {m['bandwidth_gbs']:.0f} GB/s" if m.get("bandwidth_gbs") else ""
    blas = f", BLAS {m['blas']}" if m.get("blas") else ""
    return f"{m.get('chip')} ({m.get('backend')}{bw}){blas}, mlx {m.get('mlx_version')}, mlx-lm {m.get('mlx_lm_version')}"


def _stamp(stamp: dict | None) -> str:
    if not stamp:
        return "unknown"
    return stamp.get("version", "?") + (f" (commit {stamp['commit']})" if stamp.get("commit") else "")


def software_line(result: dict) -> str:
    """mlx-spec's version and commit; per part for a merged result whose parts differ."""
    settings = result["settings"]
    parts = settings.get("parts") or []
    if parts and settings.get("mlx_spec") is None and any(p.get("mlx_spec") for p in parts):
        temperatures = [t for p in parts for t in p["temperatures"]]
        by_prompts = len(set(temperatures)) < len(temperatures)  # parts split by prompt, not only by T
        return "; ".join(f"{_stamp(p.get('mlx_spec'))} at T={','.join(map(str, p['temperatures']))}"
                         + (f" on {', '.join(p.get('prompts') or ['?'])}" if by_prompts else "") for p in parts)
    return _stamp(settings.get("mlx_spec"))


INTERRUPTED = "a partial result, stopped with Ctrl-C; it holds the prompts every arm finished"


def summary_markdown(result: dict) -> str:
    models = result["models"]
    head = [
        f"Machine: {machine_line(result)}",
        f"mlx-spec: {software_line(result)}",
        f"Target: {models['target']['name']} ({models['target']['dtype']}); "
        f"draft: {models.get('draft', {}).get('name', '—')}",
        f"Settings: {result['settings']['max_tokens']} new tokens, baseline `{result['settings']['baseline']}`, "
        f"{result['settings']['repeats']} repeat(s); speed-up = median over prompts of per-pair ratios"
        f"{INVARIANT_NOTE if any(a.get('invariant') for a in result['settings']['arms']) else ''}.",
    ]
    if result.get("interrupted"):
        head.append(f"**Interrupted:** {INTERRUPTED}.")
    if result.get("greedy_mismatches"):
        head.append(f"**Outputs differed from plain decoding's:** {', '.join(result['greedy_mismatches'])}")
    extra = "".join("\n" + part for part in (costs_markdown(result), sources_markdown(result)) if part)
    return "\n".join(head) + "\n\n" + markdown_table(SUMMARY_COLUMNS, summary_rows(result)) + "\n" + extra


def table_console():
    """The console results tables print to: the terminal's width, or (a log, a pipe) wide
    enough that no column is cut to an ellipsis, unless COLUMNS sets a width."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal or "COLUMNS" in os.environ else Console(width=LOG_WIDTH)


def _rich_table(title: str, columns: list[str], rows: list[list[str]], left: tuple[str, ...] = ()):
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_summary(result: dict, console=None) -> None:
    """The terminal form of `summary_markdown`: the summary, the machine's costs and where
    the mlx-spec arms' tokens came from."""
    console = console or table_console()
    console.print(_rich_table(f"mlx-spec bench — {machine_line(result)}", SUMMARY_COLUMNS, summary_rows(result),
                              left=("temp", "category", "arm")))
    row = cost_row(result.get("calibration"))
    if row is not None:
        console.print(_rich_table("machine costs (in target steps), drafting ceiling at acceptance α", COST_COLUMNS, [row]))
    sources = source_rows(result)
    if sources:
        console.print(_rich_table("where the mlx-spec arms' tokens came from (rounds, tokens per round, accepted share of drafted)",
                                  SOURCE_COLUMNS, sources, left=("temp", "category", "arm", "source")))
    if result.get("interrupted"):
        console.print(f"[yellow]interrupted: {INTERRUPTED}[/yellow]")
    if result.get("greedy_mismatches"):
        console.print(f"[red]outputs differed from plain decoding's: {result['greedy_mismatches']}[/red]")


def plot_result(result: dict, path: Path) -> Path:
    """Speed-up per category per arm (one panel per temperature), τ written on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = list(result["summary"])
    if not temps:
        raise SpecError("nothing to plot: the result holds no runs", "plot a result of a bench that ran")
    fig, axes = plt.subplots(1, len(temps), figsize=(6.5 * len(temps), 4.2), squeeze=False)
    for ax, temperature in zip(axes[0], temps):
        categories = result["summary"][temperature]
        arms = [a for a in next(iter(categories.values())) if a != result["settings"]["baseline"]]
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            xs = [j + i * width for j in range(len(categories))]
            ys = [categories[c][arm]["speedup"] or 0 for c in categories]
            bars = ax.bar(xs, ys, width, label=arm)
            for bar, c in zip(bars, categories):
                tau = categories[c][arm]["tau"]
                if tau:
                    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"τ{tau:.1f}",
                            ha="center", va="bottom", fontsize=6)
        _finish_panel(ax, list(categories), len(arms), width, f"temperature {temperature}")
    fig.suptitle(machine_line(result), fontsize=9)
    return _save(fig, path)


def _finish_panel(ax, categories: list[str], groups: int, width: float, title: str) -> None:
    """Baseline line at 1x, category ticks under each group of bars, labels, legend."""
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks([j + width * (groups - 1) / 2 for j in range(len(categories))])
    ax.set_xticklabels(categories)
    ax.set_ylabel("speed-up over plain decoding")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


COMPARE_COLUMNS = ["temp", "category", "arm"]


def compare_rows(results: list[dict], labels: list[str]) -> tuple[list[str], list[list[str]]]:
    """One row per (temperature, category, arm); per result: tok/s, speed-up, τ, tok/s per
    GB/s of bandwidth (so chips of different bandwidth compare fairly), and seconds to the
    first token (the prefill: compute-bound, where decoding is bandwidth-bound)."""
    header = list(COMPARE_COLUMNS)
    for label in labels:
        header += [f"{label} tok/s", f"{label} speed-up", f"{label} τ", f"{label} tok/s per 100 GB/s",
                   f"{label} 1st token s"]
    keys = []
    for result in results:
        for t, cats in result["summary"].items():
            for c, arms in cats.items():
                for a in arms:
                    if (t, c, a) not in keys:
                        keys.append((t, c, a))
    rows = []
    for t, c, a in keys:
        row = [t, c, a]
        for result in results:
            v = result["summary"].get(t, {}).get(c, {}).get(a)
            bw = result["machine"].get("bandwidth_gbs")
            if v is None:
                row += ["—"] * 5
                continue
            per_bw = v["tps"] / bw * 100 if bw and v["tps"] else None
            row += [_fmt(v["tps"]), _fmt(v["speedup"], ".2f", "×"), _fmt(v["tau"]), _fmt(per_bw),
                    _fmt(v.get("first_token"), ".2f")]
        rows.append(row)
    return header, rows


def compare_markdown(results: list[dict], labels: list[str]) -> str:
    machines = "\n".join(f"- **{label}**: {machine_line(r)}; mlx-spec {software_line(r)}"
                         + ("; interrupted (partial)" if r.get("interrupted") else "")
                         for label, r in zip(labels, results))
    header, rows = compare_rows(results, labels)
    text = machines + "\n\n" + markdown_table(header, rows) + "\n"
    costs = [[label] + row for label, r in zip(labels, results) if (row := cost_row(r.get("calibration")))]
    if costs:
        text += (f"\nMachine {COSTS_LEAD[0].lower()}{COSTS_LEAD[1:]}: a machine whose draft costs a larger share "
                 "of a target step, or whose verification grows faster with the tokens fed, gains less at the "
                 "same acceptance.\n\n"
                 + markdown_table(["machine"] + COST_COLUMNS, costs) + "\n")
    return text


def plot_compare(results: list[dict], labels: list[str], path: Path) -> Path:
    """Speed-up per category, one bar per machine, for each mlx-spec arm at temperature 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results[0]["summary"]:
        raise SpecError("nothing to plot: the first result holds no runs", "put a result that has runs first")
    temperature = next(iter(results[0]["summary"]))
    categories = list(results[0]["summary"][temperature])
    arms = [a for a in results[0]["summary"][temperature][categories[0]] if a.startswith("mlx-spec")]
    fig, axes = plt.subplots(1, max(len(arms), 1), figsize=(6 * max(len(arms), 1), 4), squeeze=False)
    width = 0.8 / len(results)
    for ax, arm in zip(axes[0], arms):
        for i, (label, result) in enumerate(zip(labels, results)):
            cats = result["summary"].get(temperature, {})
            ys = [(cats.get(c, {}).get(arm) or {}).get("speedup") or 0 for c in categories]
            ax.bar([j + i * width for j in range(len(categories))], ys, width, label=label)
        _finish_panel(ax, categories, len(results), width, f"{arm}, temperature {temperature}")
    return _save(fig, path)
