"""The interactive chat loop: multi-turn over one Pair, streamed, with a stats line per reply.

The whole conversation is passed each turn and the engine's prefix reuse prefills only the new
turn. Input and output streams are injected so the loop runs the same in a terminal, a pipe
and a test.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from contextlib import contextmanager, nullcontext as _nullcontext
from dataclasses import dataclass, field
from typing import Callable, TextIO

from mlx_spec.errors import SpecError
from mlx_spec.render import DRAFTED_LEGEND, Painter, combine, k_label, stats_table, summary_line, use_color
from mlx_spec.sampling import SamplingParams
from mlx_spec.stats import Stats
from mlx_spec.text import readable

HELP = """commands:
  /stats          full statistics of the last reply and of the conversation
  /reset          forget the conversation (caches included)
  /system TEXT    set the system prompt (/system alone clears it)
  /help           this list
  /exit           leave (Ctrl-D does too)
Ctrl-C stops a reply and keeps what was written so far."""


@dataclass(frozen=True)
class Sampling(SamplingParams):
    """The per-reply options chat passes to Pair.stream: the sampling settings (chat samples
    at temperature 0.7 unless told otherwise) and a token budget."""

    temperature: float = 0.7
    max_tokens: int = 1024

    def as_kwargs(self) -> dict:
        return {k: getattr(self, k) for k in ("temperature", "top_k", "top_p", "min_p", "seed",
                                               "repetition_penalty", "invariant")}


@dataclass
class Reply:
    text: str
    stats: Stats | None
    finish_reason: str | None
    interrupted: bool = False
    context_full: bool = False


@dataclass
class ChatSession:
    """A conversation over one pair. With a chat template the turns are chat messages; without
    one (base models such as stories260K) the conversation is one running plain text: each
    user line is appended and the model continues it."""

    pair: object
    sampling: Sampling = field(default_factory=Sampling)
    system: str | None = None
    messages: list[dict] = field(default_factory=list)  # user/assistant turns, no system
    replies: list[Stats] = field(default_factory=list)
    quick_start: bool = True  # each reply's first round without the draft (Pair.stream)

    def __post_init__(self):
        self.templated = bool(getattr(self.pair.tokenizer, "has_chat_template", False))
        self._cancel = threading.Event()

    # -- the conversation -------------------------------------------------------------
    def prompt(self, user: str):
        """What Pair.stream gets: chat messages, or the running text in plain-text mode."""
        if self.templated:
            head = [{"role": "system", "content": self.system}] if self.system else []
            return head + self.messages + [{"role": "user", "content": user}]
        text = self.system or ""
        for turn in self.messages + [{"role": "user", "content": user}]:
            if turn["role"] == "user":
                text = _join_user(text, turn["content"])
            else:
                text += turn["content"]  # the model's continuation, exactly as it came
        return text

    def reset(self) -> None:
        self.messages.clear()
        self.replies.clear()
        self.pair.reset()

    def cancel(self) -> None:
        """Ask the running reply to stop after its current round (Ctrl-C calls this)."""
        self._cancel.set()

    def reply(self, user: str, on_text: Callable[[str, list[int], list[bool]], None],
              on_start: Callable[[list[int]], None] | None = None) -> Reply:
        """Stream one reply; `on_start(prompt_ids)` runs first, `on_text(text, tokens, drafted)`
        gets each round as it arrives. Cancelled (cancel() or KeyboardInterrupt) replies keep
        their partial text."""
        ids = self.pair.encode(self.prompt(user), chat=self.templated)
        limit = self.pair.context_length
        max_tokens = self.sampling.max_tokens
        if limit:
            room = limit - len(ids)
            if room < 1:
                raise SpecError(
                    f"the conversation ({len(ids)} tokens) fills the model's context of {limit} tokens",
                    "type /reset to start a new conversation")
            max_tokens = min(max_tokens, room)
        self._cancel.clear()
        if on_start is not None:
            on_start(ids)
        parts, stats, finish, interrupted = [], None, None, False
        stream = self.pair.stream(ids, max_tokens=max_tokens, quick_start=self.quick_start,
                                  **self.sampling.as_kwargs())
        try:
            for step in stream:
                parts.append(step.text)
                stats, finish = step.stats, step.finish_reason
                on_text(step.text, step.tokens, step.drafted)
                if self._cancel.is_set():
                    interrupted = True
                    break
        except KeyboardInterrupt:
            # A second Ctrl-C lands mid-round: the engine's next prefill trims both caches
            # back to the committed context, so the conversation stays consistent.
            interrupted = True
        finally:
            stream.close()  # cancels at a round boundary: the caches hold what was emitted
        text = "".join(parts)
        # Keep the partial reply: the user saw it, and the caches already hold it.
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
        if stats is not None:
            self.replies.append(stats)
        full = finish == "length" and max_tokens < self.sampling.max_tokens
        return Reply(text, stats, finish, interrupted, context_full=full)


def _join_user(text: str, user: str) -> str:
    """Plain-text mode: a user line continues the text, separated by a space if needed."""
    if text and not text[-1].isspace() and not user[:1].isspace():
        return text + " " + user
    return text + user


# -- the loop ---------------------------------------------------------------------------
class ChatIO:
    """Streams and their terminal-ness: replies to `out`, notes and stats lines to `err`."""

    def __init__(self, inp: TextIO, out: TextIO, err: TextIO, interactive: bool | None = None):
        self.inp, self.out, self.err = inp, out, err
        self.interactive = use_tty(inp) if interactive is None else interactive
        self.color = use_color(out)
        self.err_color = use_color(err)

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def note(self, text: str, style: str = "2") -> None:
        """A dim (or otherwise styled) line on stderr; plain when stderr is not a terminal."""
        if self.err_color:
            text = f"\x1b[{style}m{text}\x1b[0m"
        self.err.write(text + "\n")
        self.err.flush()

    def error(self, err: SpecError) -> None:
        self.note(f"error: {err.message}", "31")
        if err.hint:
            self.note(f"hint: {err.hint}")

    def read(self) -> str | None:
        """One line of input, None at end of input. Ctrl-C here raises KeyboardInterrupt."""
        if self.interactive and self.inp is sys.stdin:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            # \001..\002 tell readline the colour codes take no room on the line
            prompt = "\001\x1b[1;32m\002>>> \001\x1b[0m\002" if self.color else ">>> "
            try:
                return readable(input(prompt))
            except EOFError:
                self.write("\n")
                return None
        if self.interactive:
            self.write(">>> ")
        line = self.inp.readline()
        return readable(line.rstrip("\r\n")) if line else None


def use_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def banner(session: ChatSession, io: ChatIO) -> None:
    pair = session.pair
    if pair.draft_name:
        io.note(f"target {pair.target_name} · draft {pair.draft_name} · k {k_label(pair)}")
    else:
        io.note(f"target {pair.target_name} · no draft (plain decoding)")
    if not session.templated:
        io.note("this model has no chat template: plain-text mode, each line you type is "
                "appended to the text so far and the model continues it")
    if io.color and pair.draft_name:
        io.note(f"tokens drafted and accepted are shown in {DRAFTED_LEGEND}")
    if io.interactive:
        io.note("/help for commands, Ctrl-C stops a reply, Ctrl-D or /exit leaves")


def _command(session: ChatSession, io: ChatIO, line: str) -> bool:
    """Run a /command; False when the chat should end."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/help":
        io.note(HELP, "0")
    elif name == "/reset":
        session.reset()
        io.note("conversation cleared")
    elif name == "/system":
        session.system = arg.strip() or None
        io.note(f"system prompt set: {session.system}" if session.system else "system prompt cleared")
        if not session.templated and session.messages:
            io.note("(plain-text mode: the system text is placed at the start of the text)")
    elif name == "/stats":
        if not session.replies:
            io.note("no replies yet")
        else:
            from rich.console import Console

            cols = {"last reply": session.replies[-1]}
            if len(session.replies) > 1:
                cols[f"conversation ({len(session.replies)} replies)"] = combine(session.replies)
            Console(file=io.out, force_terminal=io.color, no_color=not io.color,
                    width=None if io.color else 100).print(stats_table(cols))
    else:
        io.note(f"unknown command {name}; /help lists them")
    return True


def run_chat(session: ChatSession, io: ChatIO, debug: bool = False) -> int:
    """The read-reply loop; returns the exit code: 0, also at end of input, or 1 when piped
    input had a turn fail unexpectedly (a script should learn that a reply is missing).
    `debug` adds the traceback of such a failure."""
    banner(session, io)
    painter = Painter(session.pair.tokenizer, io.color)
    interrupted_at_prompt = False
    code = 0
    while True:
        try:
            line = io.read()
        except KeyboardInterrupt:
            if interrupted_at_prompt:  # twice in a row at the prompt: the user wants out
                io.write("\n")
                return code
            interrupted_at_prompt = True
            io.write("\n")
            io.note("(Ctrl-C again, Ctrl-D or /exit to leave)")
            continue
        interrupted_at_prompt = False
        if line is None:
            return code
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _command(session, io, line):
                return code
            continue
        try:
            reply = _reply(session, io, painter, line)
        except SpecError as err:
            io.error(err)
            continue
        except KeyboardInterrupt:  # a hard second Ctrl-C before the first round
            io.write("\n")
            io.note("[stopped]", "33")
            continue
        except BrokenPipeError:  # nobody reads the replies any more: the CLI ends quietly
            raise
        except Exception as err:
            # A bug in one turn must not cost the conversation: the turn is dropped (the
            # session records a turn only once it completes) and the chat goes on.
            io.note(f"error: unexpected {type(err).__name__}: {err} (this message was dropped, "
                    "the conversation goes on)", "31")
            if debug:
                traceback.print_exc(file=io.err)
            if not io.interactive:
                code = 1
            continue
        if not reply.text.endswith("\n"):
            io.write("\n")
        if reply.interrupted:
            io.note("[stopped; the partial reply stays in the conversation]", "33")
        if reply.stats is not None:
            io.note(summary_line(reply.stats, k_label(session.pair)))
        if reply.context_full:
            io.note(f"the model's context ({session.pair.context_length} tokens) is full: "
                    "/reset to start a new conversation", "33")


@contextmanager
def _no_echo(stream):
    """While a reply streams, keep the terminal from echoing keys into it (Ctrl-C would
    print '^C' mid-word); keys typed ahead stay buffered and reach the next prompt."""
    try:
        import termios

        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except Exception:  # not a terminal, or no termios (Windows): nothing to hide
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | getattr(termios, "ECHOCTL", 0))
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _reply(session: ChatSession, io: ChatIO, painter: Painter, line: str) -> Reply:
    """One reply with Ctrl-C routed to session.cancel() (main thread only: signal rule)."""
    def on_text(text, tokens, drafted):
        io.write(painter.paint(text, tokens, drafted))

    def on_sigint(signum, frame):
        session.cancel()
        # A second Ctrl-C is a hard stop (a long prefill has no round boundary to wait for).
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if threading.current_thread() is not threading.main_thread():
        return session.reply(line, on_text, painter.start)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _no_echo(io.inp) if io.interactive else _nullcontext():
            return session.reply(line, on_text, painter.start)
    finally:
        signal.signal(signal.SIGINT, previous)
