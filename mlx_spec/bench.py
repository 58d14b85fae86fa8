"""Benchmark runner: arms measured interleaved in one process, ratios against plain decoding.

Protocol (../shared/docs/benchmarking.md): warm up every arm, then for each prompt and repeat run the
arms one after another with the same token budget and seed, and report medians of per-pair
ratios. The order turns round from one prompt to the next (A B C, C B A, A B C ...): on a
host whose speed drifts, a drift that favours the later arms on one prompt favours the earlier
ones on the next, instead of always the same arm. Greedy outputs must be identical across
arms; a mismatch is recorded and makes the run fail.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import mlx.core as mx

from mlx_spec.errors import SpecError
from mlx_spec.pair import Pair, draft_head, vocab_size
from mlx_spec.platform import machine, software
from mlx_spec.policy import cached_calibration, calibration_key

SCHEMA = "mlx-spec-bench/1"
CATEGORIES = ("code", "math", "open", "edit")
WARMUP_TOKENS = 8
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "prompts"


@dataclass(frozen=True)
class Arm:
    """One configuration under test. kind: "plain" (our loop, no proposer; the baseline),
    "spec" (mlx-spec), "mlx-lm" (mlx_lm.stream_generate, with its draft when k > 0)."""

    name: str
    kind: str
    k: int | None = None  # spec: None adapts; mlx-lm: num_draft_tokens (0: no draft)
    ngram: bool = False
    tree: bool = True  # spec: the draft's runners-up ride in the verification's padding rows
    quick_start: bool = False  # spec: the first round without the draft, its prefill after it (chat's way)
    invariant: bool = True  # plain, spec: sample drafter-invariantly (the same text as plain's at a seed); mlx-lm arms say False (default_arms)


def default_arms(k_fixed: int = 3, mlx_lm_ks: tuple[int, ...] = (3, 5), chain: bool = False,
                 quick: bool = False, mlx_lm_plain: bool = False, invariant: bool = True) -> list[Arm]:
    """The suite's arms; `chain` adds adaptive mlx-spec verifying the draft's chain alone (no
    token tree), to measure what the tree is worth; `quick` adds adaptive mlx-spec with chat's
    quick start, to weigh its sooner first token against the round it does not speculate;
    `mlx_lm_plain` adds mlx-lm's own decoding without a draft, to check that the baseline
    every speed-up is measured against is no slower than mlx-lm's (it is not one of the
    "mlx-lm k=" arms the best-k ratio is taken over). `invariant` (default): every mlx-spec
    arm, plain included, samples drafter-invariantly, so at temperature > 0 too each arm's
    reply is plain's, token for token, and a prompt's speed-ups compare the same text (checked
    as greedy output is); False: they accept by rejection sampling."""
    arms = [
        Arm("plain", "plain"),
        Arm("mlx-spec adaptive", "spec", None, ngram=True),
        Arm(f"mlx-spec k={k_fixed}", "spec", k_fixed, ngram=True),
    ]
    if chain:
        arms.append(Arm("mlx-spec adaptive chain", "spec", None, ngram=True, tree=False))
    if quick:
        arms.append(Arm("mlx-spec adaptive quick", "spec", None, ngram=True, quick_start=True))
    arms += [Arm(f"mlx-lm k={k}", "mlx-lm", k, invariant=False) for k in mlx_lm_ks]  # mlx-lm samples its way
    if mlx_lm_plain:
        arms.append(Arm("mlx-lm plain", "mlx-lm", 0, invariant=False))
    if not invariant:
        arms = [replace(arm, invariant=False) for arm in arms]
    return arms


@dataclass
class Run:
    tokens: list[int]
    seconds: float
    stats: dict | None = None
    first_round: tuple[float, int] | None = None  # (seconds until it arrived, tokens it emitted)

    @property
    def tps(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    @property
    def first_token(self) -> float | None:
        """Seconds to the first token: the prefill (of the draft too) and the first round."""
        return self.first_round[0] if self.first_round else None

    @property
    def decode_tps(self) -> float | None:
        """Tokens per second after the first round: the tokens the later rounds emitted over
        the time they took, free of the prefill and of the prompt's length (None when the
        reply ended in its first round)."""
        if not self.first_round:
            return None
        seconds, tokens = self.seconds - self.first_round[0], len(self.tokens) - self.first_round[1]
        return tokens / seconds if tokens > 0 and seconds > 0 else None


def load_prompts(categories=CATEGORIES, per_category: int | None = None, root: Path = PROMPTS_DIR,
                 skip: int = 0, ids: list[str] | None = None):
    """{category: [{"id", "prompt"}, ...]} from benchmarks/prompts/<category>.json: after the
    first `skip` of each set, `per_category` of them (all when None); with `ids`, those
    prompts alone, wherever they are (categories holding none of them left out)."""
    prompts = {}
    for category in categories:
        path = Path(root) / f"{category}.json"
        try:
            items = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SpecError(f"cannot read prompt set {path}: {e}", f"categories are {', '.join(CATEGORIES)}")
        if ids is not None:
            chosen = [item for item in items if item.get("id") in ids]
            if chosen:
                prompts[category] = chosen
            continue
        chosen = items[skip : skip + per_category] if per_category else items[skip:]
        if not chosen:
            raise SpecError(f"no prompts left in {path} after skipping {skip} of {len(items)}",
                            "give a smaller --skip-prompts")
        prompts[category] = chosen
    if ids is not None:
        found = {item["id"] for items in prompts.values() for item in items}
        unknown = [i for i in ids if i not in found]
        if unknown:
            raise SpecError(f"no prompt with id {', '.join(unknown)} in {', '.join(categories)}",
                            f"the ids are the \"id\" fields of {Path(root)}/<category>.json")
    return prompts


def prompts_by_id(categories=CATEGORIES, root: Path = PROMPTS_DIR) -> dict[str, str]:
    """{id: prompt text} over the categories' prompt sets."""
    return {item["id"]: item["prompt"] for items in load_prompts(categories, root=root).values() for item in items}


class Bench:
    """Holds the loaded pair and one engine per mlx-spec arm; runs one arm on one prompt."""

    def __init__(self, target, draft, arms: list[Arm], max_tokens: int = 128, chat: bool = True,
                 recalibrate: bool = False):
        """`recalibrate`: measure the pair's costs anew before the arms are built (and keep
        them for later runs), so that the policies plan with what a step costs now."""
        self.target, self.draft, self.arms = target, draft, arms
        self.max_tokens, self.chat = max_tokens, chat
        if recalibrate and draft is not None and any(arm.kind == "spec" for arm in arms):
            key = calibration_key(target.name, draft.name, target.nbytes)
            head = draft_head(draft.model, target.tokenizer, vocab_size(target.model))  # as the arms run it
            cached_calibration(key, target.model, draft.model, k_max=Pair.k_max, fresh=True, head=head)
        self.pairs: dict[str, Pair] = {}
        for arm in arms:
            if arm.kind in ("plain", "spec"):
                self.pairs[arm.name] = Pair(
                    target.model, target.tokenizer,
                    draft=draft.model if arm.kind == "spec" and draft else None,
                    ngram=arm.ngram, k=arm.k, target_name=target.name,
                    draft_name=draft.name if draft else None,
                    target_bytes=target.nbytes, draft_bytes=draft.nbytes if draft else 0,
                    tree=arm.tree,
                )
        any_pair = next(iter(self.pairs.values()), None) or Pair(target.model, target.tokenizer)
        self.encode = any_pair.encode

    def run(self, arm: Arm, ids: list[int], temperature: float, seed: int,
            max_tokens: int | None = None, trace: bool = False) -> Run:
        """One arm on one prompt (`trace`: an mlx-spec arm keeps a record of every round in
        its pair's `last_stats.trace`)."""
        max_tokens = max_tokens or self.max_tokens
        if arm.kind == "mlx-lm":
            return self._run_mlx_lm(arm, ids, temperature, seed, max_tokens)
        pair = self.pairs[arm.name]
        pair.reset()  # every run prefills from scratch, like the mlx-lm arms
        tic = time.perf_counter()
        tokens, first_round = [], None
        for step in pair.stream(ids, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                quick_start=arm.quick_start, invariant=arm.invariant, trace=trace):
            tokens += step.tokens
            first_round = first_round or (time.perf_counter() - tic, len(step.tokens))
        seconds = time.perf_counter() - tic
        stats = pair.last_stats.to_dict()
        costs = self.costs(arm)
        if costs is not None:  # what this run's counted forwards cost at the calibrated prices
            stats["modeled_speedup"] = costs.modeled_speedup(pair.last_stats)
        return Run(tokens, seconds, stats, first_round)

    def costs(self, arm: Arm):
        """The calibrated costs an mlx-spec arm's policy plans with (None: plain, mlx-lm)."""
        pair = self.pairs.get(arm.name)
        return getattr(pair.engine.policy, "calibration", None) if pair else None

    def _run_mlx_lm(self, arm: Arm, ids, temperature, seed, max_tokens) -> Run:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        mx.random.seed(seed)
        kwargs = {"sampler": make_sampler(temp=temperature)}
        if arm.k:
            kwargs.update(draft_model=self.draft.model, num_draft_tokens=arm.k)
        tic = time.perf_counter()
        tokens, from_draft, first_token = [], [], None
        for response in stream_generate(self.target.model, self.target.tokenizer, ids,
                                        max_tokens=max_tokens, **kwargs):
            first_token = first_token or time.perf_counter() - tic
            tokens.append(int(response.token))
            from_draft.append(bool(response.from_draft))
        seconds = time.perf_counter() - tic
        rounds, drafted = mlx_lm_rounds(from_draft, arm.k or 0, max_tokens)
        accepted = sum(from_draft)
        stats = {"accepted": accepted, "rounds": rounds, "tau": len(tokens) / rounds}
        if arm.k:
            stats.update(drafted=drafted, acceptance_rate=accepted / max(drafted, 1), mean_k=drafted / rounds)
        first_round = (first_token, first_round_tokens(from_draft)) if tokens else None
        return Run(tokens, seconds, stats, first_round)


def first_round_tokens(from_draft: list[bool]) -> int:
    """Tokens mlx-lm's first round emitted (its accepted drafts, then the target's token),
    from the stream's `from_draft` flags; it yields them one by one as soon as the round ends."""
    return next((i + 1 for i, flag in enumerate(from_draft) if not flag), len(from_draft))


def mlx_lm_rounds(from_draft: list[bool], k: int, max_tokens: int) -> tuple[int, int]:
    """(rounds, drafted tokens) of an mlx-lm speculative run, read from its stream's
    `from_draft` flags. A round emits its accepted draft tokens, then one token of the
    target's own, except where the stream stopped inside it (the token budget, or an
    end-of-sequence token the draft proposed); mlx-lm drafts min(k, tokens left) per round."""
    rounds = drafted = emitted = 0
    starts_round = True
    for flag in from_draft:
        if starts_round:
            rounds += 1
            drafted += min(k, max_tokens - emitted)
        emitted += 1
        starts_round = not flag
    return max(rounds, 1), drafted


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class SuiteInterrupted(KeyboardInterrupt):
    """Ctrl-C after some prompts were measured by every arm: `result` is the document of
    those, marked `"interrupted": true`. A KeyboardInterrupt still, for callers that only stop."""

    def __init__(self, result: dict):
        super().__init__()
        self.result = result


def run_suite(bench: Bench, prompts: dict, temperatures=(0.0, 0.7), repeats: int = 1,
              on_progress: Callable[[str], None] | None = None, stamp: dict | None = None) -> dict:
    """Run every arm on every prompt, interleaved; return the result document. `stamp`: the
    version and commit of the code that runs (`platform.software()`), taken when it was
    imported; by default, now. Ctrl-C raises SuiteInterrupted with the prompts every arm
    finished (a plain KeyboardInterrupt before the first)."""
    # the code that runs is what was loaded at the start: stamp it before a long suite, during
    # which the checkout may move on
    stamp = stamp or software()
    records = []
    try:
        _measure(bench, prompts, temperatures, repeats, on_progress, records)
    except KeyboardInterrupt:
        if not records:
            raise
        raise SuiteInterrupted(_document(bench, records, temperatures, repeats, stamp, interrupted=True)) from None
    return _document(bench, records, temperatures, repeats, stamp)


def _measure(bench: Bench, prompts: dict, temperatures, repeats: int,
             on_progress: Callable[[str], None] | None, records: list[dict]) -> None:
    """Append to `records` the runs of every arm, one prompt and repeat at a time: a prompt's
    runs go in together, so an interrupted suite keeps only comparisons that are whole."""
    total = sum(len(v) for v in prompts.values()) * len(temperatures) * repeats * len(bench.arms)
    done = 0
    first_ids = bench.encode(next(iter(prompts.values()))[0]["prompt"], chat=bench.chat)
    for arm in bench.arms:  # warm-up: compile and allocate every code path once
        bench.run(arm, first_ids, 0.0, 0, max_tokens=WARMUP_TOKENS)
    for temperature in temperatures:
        for category, items in prompts.items():
            for item in items:
                ids = bench.encode(item["prompt"], chat=bench.chat)
                for repeat in range(repeats):
                    seed = 1000 * repeat + 7
                    runs = {}
                    # every other prompt (and repeat) runs the arms in reverse
                    order = bench.arms if (done // len(bench.arms)) % 2 == 0 else bench.arms[::-1]
                    for arm in order:
                        runs[arm.name] = run = bench.run(arm, ids, temperature, seed)
                        done += 1
                        if on_progress:
                            on_progress(f"[{done}/{total}] T={temperature} {category}/{item['id']} {arm.name}: {run.tps:.2f} tok/s")
                    base = runs[bench.arms[0].name]
                    whole = []
                    for arm in bench.arms:
                        run = runs[arm.name]
                        identical = run.tokens == base.tokens
                        whole.append({
                            "temperature": temperature, "category": category, "prompt": item["id"],
                            "repeat": repeat, "arm": arm.name, "kind": arm.kind, "k": arm.k,
                            "position": order.index(arm),
                            "tokens": len(run.tokens), "seconds": run.seconds, "tps": run.tps,
                            "speedup": run.tps / base.tps if base.tps else None,
                            "first_token": run.first_token,
                            "first_round_tokens": run.first_round[1] if run.first_round else None,
                            "decode_tps": run.decode_tps,
                            "decode_speedup": run.decode_tps / base.decode_tps
                            if run.decode_tps and base.decode_tps else None,
                            "identical": identical, "invariant": arm.invariant, "stats": run.stats,
                        })
                    records += whole  # one step: Ctrl-C cannot leave half a comparison


def greedy_mismatches(records: list[dict]) -> list[str]:
    """The runs whose text was not plain decoding's, where it must be: greedy runs, and
    drafter-invariant sampled ones, token for token."""
    return [f"{r['category']}/{r['prompt']} {r['arm']}" for r in records
            if (r["temperature"] == 0 or r.get("invariant")) and not r["identical"]]


def _document(bench: Bench, records: list[dict], temperatures, repeats: int, stamp: dict,
              interrupted: bool = False) -> dict:
    mismatches = greedy_mismatches(records)
    if interrupted:  # the settings describe the runs held, so that `bench merge` counts parts right
        temperatures = [t for t in temperatures if any(r["temperature"] == t for r in records)]
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "models": {role: _model_info(m) for role, m in (("target", bench.target), ("draft", bench.draft)) if m},
        "settings": {
            "max_tokens": bench.max_tokens, "chat_template": bench.chat, "repeats": repeats,
            "temperatures": list(temperatures), "arms": [vars(a) for a in bench.arms],
            "baseline": bench.arms[0].name, "mlx_spec": stamp,
        },
        "calibration": next((asdict(c) for c in map(bench.costs, bench.arms) if c), None),
        "runs": records,
        "greedy_mismatches": mismatches,
        "summary": summarize(records, [a.name for a in bench.arms]),
        **({"interrupted": True} if interrupted else {}),
    }


def _model_info(loaded) -> dict:
    return {"name": loaded.name, "path": str(loaded.path), "dtype": loaded.dtype, "bytes": loaded.nbytes}


def summarize(records: list[dict], arm_names: list[str]) -> dict:
    """{temperature: {category: {arm: medians}}}: per-prompt medians first, then over prompts."""
    summary: dict = {}
    keys = sorted({(r["temperature"], r["category"]) for r in records})
    for temperature, category in keys:
        rows = [r for r in records if r["temperature"] == temperature and r["category"] == category]
        per_arm = {}
        for arm in arm_names:
            mine = [r for r in rows if r["arm"] == arm]
            by_prompt: dict[str, list] = {}
            for r in mine:
                by_prompt.setdefault(r["prompt"], []).append(r)
            speedups = [_median([r["speedup"] for r in rs]) for rs in by_prompt.values()]
            decode = [_median([r.get("decode_speedup") for r in rs]) for rs in by_prompt.values()]
            modeled = [_median([(r["stats"] or {}).get("modeled_speedup") for r in rs]) for rs in by_prompt.values()]
            stats = [r["stats"] for r in mine if r["stats"] and "tau" in r["stats"]]
            per_arm[arm] = {
                "tps": _median([r["tps"] for r in mine]),
                "speedup": _median(speedups),
                "min_speedup": min(speedups) if speedups else None,
                "modeled_speedup": _median(modeled),
                "decode_speedup": _median(decode),
                "first_token": _median([r.get("first_token") for r in mine]),
                "tau": _median([s["tau"] for s in stats]),
                "acceptance_rate": _median([s.get("acceptance_rate") for s in stats]),
                "mean_k": _median([s.get("mean_k") for s in stats]),
                # the draft's price relative to the calibration's as the rounds took it
                "draft_price": _median([s.get("draft_price") for s in stats]),
                "time_split": {
                    part: _median([s["time_split"][part] for s in stats if "time_split" in s])
                    for part in ("draft", "verify", "other")
                } if any("time_split" in s for s in stats) else None,
                "peak_memory_gb": max((s["peak_memory_gb"] for s in stats if "peak_memory_gb" in s), default=None),
            }
        mlx_lm = {a: v for a, v in per_arm.items() if a.startswith("mlx-lm k=")}
        best = max(mlx_lm.values(), key=lambda v: v["speedup"] or 0, default=None)
        for arm, v in per_arm.items():
            v["vs_mlx_lm_best"] = v["speedup"] / best["speedup"] if best and best["speedup"] and v["speedup"] else None
            same_k = per_arm.get(f"mlx-lm k={arm.split('k=')[-1]}") if "mlx-spec k=" in arm else None
            v["vs_mlx_lm_same_k"] = v["speedup"] / same_k["speedup"] if same_k and same_k["speedup"] else None
        summary.setdefault(str(temperature), {})[category] = per_arm
    return summary


def merge_results(results: list[dict], replace: bool = False) -> dict:
    """One result from runs of the same models on the same machine in separate commands: the
    greedy and the temperature-0.7 halves of the suite, or one suite run over some prompts and
    later over others (`--skip-prompts`, `--prompts-dir`). Runs side by side, summary recomputed, each part's
    temperatures, prompts, arms, date and commit kept. No run may appear in two parts, unless
    `replace`: then a prompt run again at a temperature by a later result replaces every arm
    of its earlier runs there (a re-measure after a change to the code)."""
    if replace:
        results = _without_superseded(results)
    first = results[0]
    for other in results[1:]:
        if other["machine"].get("chip") != first["machine"].get("chip") or \
                {r: m["name"] for r, m in other["models"].items()} != {r: m["name"] for r, m in first["models"].items()}:
            raise SpecError("these results are from different machines or models",
                            "merge the parts of one suite; put different machines side by side with `bench compare`")
        cores = {first["machine"].get("blas_core"), other["machine"].get("blas_core")} - {None}
        if len(cores) > 1:  # the kernels set the costs: one suite runs on one set of them
            raise SpecError(f"these results ran different BLAS kernels ({' and '.join(sorted(cores))})",
                            "merge the parts of one suite; put them side by side with `bench compare`")
    seen: dict[tuple, int] = {}
    for i, r in enumerate(results):
        for run in r["runs"]:
            key = (run["temperature"], run["category"], run["prompt"], run["arm"], run["repeat"])
            if seen.setdefault(key, i) != i:
                raise SpecError(f"two results hold the same run: T={key[0]} {key[1]}/{key[2]}, {key[3]}",
                                "merge parts run at different temperatures (--temps) or over different prompts")
    temperatures = [t for r in results for t in r["settings"]["temperatures"]]
    arms: dict[str, dict] = {}
    for r in results:
        for arm in r["settings"]["arms"]:
            arms.setdefault(arm["name"], arm)
    parts = [part for r in results for part in _parts(r)]
    runs = [run for r in results for run in r["runs"]]
    stamps = [part.get("mlx_spec") for part in parts]
    return {
        **first,
        "created": max(r["created"] for r in results),
        "settings": {**first["settings"], "temperatures": sorted(set(temperatures)),
                     "arms": list(arms.values()), "parts": parts,
                     "mlx_spec": stamps[0] if all(s == stamps[0] for s in stamps) else None},
        "calibration": next((r["calibration"] for r in results if r.get("calibration")), None),
        "runs": runs,
        "greedy_mismatches": greedy_mismatches(runs),
        "summary": summarize(runs, list(arms)),
        **({"interrupted": True} if any(r.get("interrupted") for r in results) else {}),
    }


def _parts(result: dict) -> list[dict]:
    """What a result ran: its parts if it was merged, else one part of its own."""
    return result["settings"].get("parts") or [{
        "temperatures": result["settings"]["temperatures"], "arms": [a["name"] for a in result["settings"]["arms"]],
        "prompts": list(dict.fromkeys(run["prompt"] for run in result["runs"])),
        "created": result["created"], "mlx_spec": result["settings"].get("mlx_spec")}]


def _without_superseded(results: list[dict]) -> list[dict]:
    """Each result less its runs of a (temperature, prompt) that a later result ran again; a
    part keeps a prompt while any of its temperatures still holds that prompt's runs."""
    later: set[tuple] = set()
    kept = []
    for r in reversed(results):
        runs = [run for run in r["runs"] if (run["temperature"], run["prompt"]) not in later]
        parts = [{**part, "prompts": [p for p in part["prompts"]
                                      if any((t, p) not in later for t in part["temperatures"])]}
                 for part in _parts(r)]
        later |= {(run["temperature"], run["prompt"]) for run in r["runs"]}
        if runs:
            kept.append({**r, "runs": runs, "settings": {**r["settings"], "parts": [p for p in parts if p["prompts"]]}})
    return kept[::-1]


def write_result(result: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


# what show, compare and merge read of a result without asking; the rest is looked up with .get
REQUIRED = {"created": str, "machine": dict, "models": dict, "settings": dict, "runs": list,
            "greedy_mismatches": list, "summary": dict}
REQUIRED_SETTINGS = {"max_tokens": int, "repeats": int, "temperatures": list, "arms": list, "baseline": str}


def _shape_error(result) -> str | None:
    """What is wrong with the shape of a loaded result (None: nothing)."""
    def named(value) -> str:  # in JSON's words, which the file is written in
        return {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
                type(None): "null"}.get(type(value), type(value).__name__)

    def a(value) -> str:
        word = named(value)
        return ("an " if word[0] in "aeiou" else "a ") + word

    if not isinstance(result, dict):
        return f"the file holds a JSON {named(result)}, not an object"
    if result.get("schema") != SCHEMA:
        return f"schema {json.dumps(result.get('schema'))}, expected {json.dumps(SCHEMA)}"
    for where, doc, required in (("", result, REQUIRED), ("settings.", result.get("settings"), REQUIRED_SETTINGS)):
        missing = [key for key in required if key not in doc]
        if missing:
            return f"missing {', '.join(where + key for key in missing)}"
        wrong = [f"{where}{key} is {a(doc[key])}, not {a(kind())}"
                 for key, kind in required.items() if not isinstance(doc[key], kind)]
        if wrong:
            return "; ".join(wrong)
    if not isinstance(result["models"].get("target"), dict):
        return "models.target is missing or not an object"
    if not all(isinstance(run, dict) for run in result["runs"]):
        return "runs holds something other than objects"
    return None


def check_result(result, path) -> dict:
    """The result, if it has the shape show, compare and merge rely on; else one error naming
    the file and what is wrong (a hand-edited or foreign file must not end in a KeyError)."""
    problem = _shape_error(result)
    if problem:
        raise SpecError(f"{path} is not an mlx-spec benchmark result: {problem}",
                        "pass result files written by `mlx-spec bench` or `bench merge`")
    return result


def read_result(path: Path) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read benchmark result {path}: {e}", "pass files written by `mlx-spec bench`")
    return check_result(result, path)
