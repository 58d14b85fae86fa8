"""The Python API apps embed: load a draft/target pair once, then stream or generate.

    pair = load_pair("qwen2.5-coder-1.5b")            # a name from models.toml
    pair = load_pair("path/to/target", draft="ngram")  # or explicit references
    for step in pair.stream("Write quicksort in Python."):
        print(step.text, end="")
    print(pair.last_stats.summary())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence, Union

from mlx_spec.decode import Engine, Step
from mlx_spec.draft_head import SubsetHead, ascii_token_ids
from mlx_spec.errors import SpecError
from mlx_spec.policy import AdaptiveK, FixedK, cached_calibration, calibration_key
from mlx_spec.proposers import DraftModelProposer, NgramProposer
from mlx_spec.sampling import SamplingParams
from mlx_spec.stats import Stats

Messages = Sequence[dict]
Prompt = Union[str, Sequence[int], Messages]
MAX_MISMATCHES_SHOWN = 3
MAX_SUBSET_SHARE = 0.8  # a draft head over more of the vocabulary than this saves too little


def vocab_size(model) -> int:
    """Rows of the model's output layer (the logits' width), padding included."""
    args = getattr(model, "args", None)
    size = getattr(args, "vocab_size", None)
    if size is None:
        raise SpecError("cannot tell the model's vocabulary size", "is this an mlx-lm model?")
    return int(size)


def check_tokenizers(target_tok, draft_tok, target_name: str, draft_name: str) -> None:
    """Refuse a pair whose tokenizers disagree on the ids they share (padding may differ)."""
    t_vocab = {i: s for s, i in target_tok.get_vocab().items()}
    d_vocab = {i: s for s, i in draft_tok.get_vocab().items()}
    shared = sorted(set(t_vocab) & set(d_vocab))
    bad = [i for i in shared if t_vocab[i] != d_vocab[i]]
    if bad or not shared:
        shown = ", ".join(f"id {i}: {t_vocab[i]!r} vs {d_vocab[i]!r}" for i in bad[:MAX_MISMATCHES_SHOWN])
        raise SpecError(
            f"tokenizers of target {target_name} and draft {draft_name} disagree on "
            f"{len(bad)} of {len(shared)} shared token ids ({shown or 'no ids in common'})",
            "pick a draft from the same model family (same tokenizer), or use --draft ngram",
        )


@dataclass
class Result:
    text: str
    tokens: list[int]
    finish_reason: str | None
    stats: Stats


@dataclass
class Pair:
    """A target, an optional proposer setup, and the engine that keeps their caches."""

    target: object  # mlx-lm model
    tokenizer: object  # mlx-lm TokenizerWrapper
    draft: object | None = None
    ngram: bool = False
    k: int | None = None  # None: adaptive
    k_max: int = 15
    target_name: str = "target"
    draft_name: str | None = None
    target_bytes: int = 0
    draft_bytes: int = 0
    use_kernel: bool | None = None
    context_length: int | None = None
    subset_vocab: bool = True  # the draft scores only ASCII tokens + the conversation's
    tree: bool = True  # the draft's runners-up ride in the verification's padding rows
    learn_costs: bool = True  # the policy reprices drafting by what its rounds take
    last_stats: Stats | None = field(default=None, init=False)

    def __post_init__(self):
        if self.context_length is None:
            args = getattr(self.target, "args", None)
            self.context_length = getattr(args, "max_position_embeddings", None)
        proposers, head = [], None
        ngram = NgramProposer() if self.ngram else None
        if ngram is not None:
            proposers.append(ngram)
        if self.draft is not None:
            head = draft_head(self.draft, self.tokenizer, vocab_size(self.target)) if self.subset_vocab else None
            drafter = DraftModelProposer(self.draft, vocab_size(self.target), head)
            if ngram is not None:  # where the text repeats, a draft chain checks the n-gram's guess
                drafter.guess = ngram.continuation
            proposers.append(drafter)
        self.engine = Engine(
            self.target,
            self.tokenizer,
            proposers,
            policy=self._policy(bool(proposers), head),
            use_kernel=self.use_kernel,
            tree=self.tree,
        )

    def _policy(self, drafting: bool, head: SubsetHead | None = None):
        """The policy choosing k, planning with this machine's costs: the draft timed through
        `head`, the output layer its rounds run."""
        if not drafting or self.k == 0:
            return FixedK(0)
        key = calibration_key(self.target_name, self.draft_name, self.target_bytes)
        costs = cached_calibration(key, self.target, self.draft, self.k_max, head=head)
        if self.k is not None:
            return FixedK(self.k, costs, learn_costs=self.learn_costs)
        return AdaptiveK(costs, self.k_max, learn_costs=self.learn_costs)

    def encode(self, prompt: Prompt, chat: bool = True, system: str | None = None) -> list[int]:
        """Text (chat-templated when the tokenizer has a template and chat=True), a list of
        chat messages, or token ids -> token ids."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise SpecError("the prompt is empty", "type something to send to the model")
            if chat and self.tokenizer.has_chat_template:
                messages = ([{"role": "system", "content": system}] if system else [])
                return self.encode(messages + [{"role": "user", "content": prompt}])
            return list(self.tokenizer.encode(prompt))
        prompt = list(prompt)
        if not prompt:
            raise SpecError("the prompt is empty", "give at least one token or message")
        if isinstance(prompt[0], dict):
            if not self.tokenizer.has_chat_template:
                raise SpecError("this tokenizer has no chat template", "pass raw text with chat=False")
            return list(self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True))
        return [int(t) for t in prompt]

    def stream(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        stop: Sequence[str] = (),
        chat: bool = True,
        system: str | None = None,
        trace: bool = False,
        quick_start: bool = False,
        invariant: bool = True,
    ) -> Iterator[Step]:
        """Yield one Step per round (text, token ids, which were drafted, running stats).
        Close the generator to cancel; the caches keep exactly the tokens emitted. `trace`
        keeps a record of every round in `stats.trace` (see `mlx_spec.trace`). `quick_start`
        yields the first round before the draft model reads the prompt (plain, or an n-gram
        guess): its tokens come as soon as plain decoding's would (chat does this), for about
        one round's gain. `invariant` (default) samples drafter-invariantly (mlx_spec.coupling):
        with a seed, the reply is plain sampling's with that seed, token for token, whatever the
        draft or k; False accepts by rejection sampling."""
        sampling = SamplingParams(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
            repetition_penalty=repetition_penalty, invariant=invariant,
        )
        ids = self.encode(prompt, chat=chat, system=system)
        if self.context_length and len(ids) + max_tokens > self.context_length:
            raise SpecError(
                f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                f"context of {self.context_length} tokens",
                "shorten the prompt or lower max_tokens (--max-tokens)",
            )
        stats = Stats(target_bytes=self.target_bytes, draft_bytes=self.draft_bytes, trace=[] if trace else None)
        self.last_stats = stats
        yield from self.engine.decode(ids, sampling=sampling, max_tokens=max_tokens, stop_strings=stop, stats=stats,
                                      quick_start=quick_start)

    def generate(self, prompt: Prompt, **kwargs) -> Result:
        """The whole completion at once."""
        text, tokens, finish = [], [], None
        for step in self.stream(prompt, **kwargs):
            text.append(step.text)
            tokens += step.tokens
            finish = step.finish_reason
        return Result("".join(text), tokens, finish, self.last_stats)

    def reset(self) -> None:
        """Forget the conversation held in the caches."""
        self.engine.reset()


def draft_head(draft, tokenizer, target_vocab: int) -> SubsetHead | None:
    """The cheaper draft output layer, when the subset is worth it and the draft allows it."""
    vocab = min(target_vocab, vocab_size(draft))
    ids = _ascii_ids(tokenizer, vocab)
    if len(ids) > MAX_SUBSET_SHARE * vocab:
        return None
    return SubsetHead.build(draft, ids)


_ASCII_IDS: dict[tuple[int, int], list[int]] = {}


def _ascii_ids(tokenizer, vocab: int) -> list[int]:
    key = (id(tokenizer), vocab)  # decoding the whole vocabulary takes a moment: once per process
    if key not in _ASCII_IDS:
        _ASCII_IDS[key] = ascii_token_ids(tokenizer, vocab)
    return _ASCII_IDS[key]


def load_pair(
    target: str,
    draft: str | None = None,
    *,
    ngram: bool | None = None,
    k: int | None = None,
    k_max: int = 15,
    dtype: str | None = None,
    use_kernel: bool | None = None,
    subset_vocab: bool = True,
    tree: bool = True,
    learn_costs: bool = True,
) -> Pair:
    """Load a pair once. `target` is a pair name from models.toml, a local directory or a
    Hugging Face repo id. `draft`: None (the pair's draft, or plain decoding for a bare
    target), a reference, "ngram" (draft-free), or "none". `ngram` adds n-gram proposals
    beside the draft model (None: on; each round the policy ranks the sources by expected
    rate). `k`: fixed proposal length; None adapts it. `subset_vocab`: the draft scores only plain-text
    tokens and the conversation's own (a cheaper output layer; lossless either way). `tree`:
    the draft's runners-up are verified beside its chain where the verification has padding
    rows (lossless either way). `learn_costs`: the policy reprices the draft by what its rounds
    take where they contradict the calibration (False: it plans with the calibration alone,
    and a seed then reproduces a sampled reply exactly on this machine)."""
    from mlx_spec.loading import load_model
    from mlx_spec.registry import load_registry

    registry = load_registry()
    if target in registry.pairs:
        spec = registry.get(target)
        target = spec.target
        if draft is None:
            draft = spec.draft
    if draft == "ngram":
        draft, ngram = None, True
    elif draft == "none":
        draft, ngram = None, bool(ngram)
    elif ngram is None:
        ngram = draft is not None
    loaded_target = load_model(target, dtype=dtype)
    loaded_draft = load_model(draft, dtype=dtype) if draft else None
    if loaded_draft is not None:
        check_tokenizers(loaded_target.tokenizer, loaded_draft.tokenizer, loaded_target.name, loaded_draft.name)
    from mlx_spec.platform import set_wired_limit

    set_wired_limit(loaded_target.nbytes + (loaded_draft.nbytes if loaded_draft else 0))
    return Pair(
        target=loaded_target.model,
        tokenizer=loaded_target.tokenizer,
        draft=loaded_draft.model if loaded_draft else None,
        ngram=ngram,
        k=k,
        k_max=k_max,
        target_name=loaded_target.name,
        draft_name=loaded_draft.name if loaded_draft else ("ngram" if ngram else None),
        target_bytes=loaded_target.nbytes,
        draft_bytes=loaded_draft.nbytes if loaded_draft else 0,
        use_kernel=use_kernel,
        subset_vocab=subset_vocab,
        tree=tree,
        learn_costs=learn_costs,
    )
