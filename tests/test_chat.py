"""Chat: scripted multi-turn through the CLI, prefix reuse across turns, the /commands,
Ctrl-C mid-reply, the plain-text mode of template-less models, and drafted-token colouring."""

from __future__ import annotations

import io
import re

import pytest
from typer.testing import CliRunner

from mlx_spec.chat import ChatIO, ChatSession, Sampling, run_chat
from mlx_spec.cli import app
from mlx_spec.pair import load_pair
from mlx_spec.render import DRAFTED_ANSI, Painter

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def chat(*args, input: str):
    return CliRunner().invoke(app, ["chat", *map(str, args)], input=input)


def prefilled(stderr: str) -> list[int]:
    """The 'prompt N tok' of each reply's stats line."""
    return [int(n) for n in re.findall(r"prompt (\d+) tok", stderr)]


def generated(stderr: str) -> list[int]:
    return [int(n) for n in re.findall(r"(\d+) tokens at", stderr)]


@pytest.fixture
def stories_pair(stories_path):
    return load_pair(str(stories_path), draft=str(stories_path), k=3)


def greedy(max_tokens=30):
    return Sampling(max_tokens=max_tokens, temperature=0.0)


# -- through the CLI, stdin scripted ------------------------------------------------------
def test_second_turn_prefills_only_the_new_text(stories_path):
    result = chat("--target", stories_path, "--draft", stories_path, "--k", 3, "--temp", 0,
                  "--max-tokens", 30, input="Once upon a time\nThe next day\n")
    assert result.exit_code == 0, result.output
    first, second = prefilled(result.stderr)
    # Turn 2's prompt holds all of turn 1 (prompt + 30 generated tokens) plus the new line.
    assert first == 5
    assert second < first + 30
    assert second <= 6  # only the new text (and the re-tokenized boundary)
    assert result.stdout.startswith(", there was a little girl named Lily")
    assert len(result.stdout.strip().split("\n")) >= 2  # two replies


def test_chat_template_turns_reuse_the_conversation_prefix(cli_chat_model):
    pair = load_pair(str(cli_chat_model), draft="ngram", k=3)
    session = ChatSession(pair, sampling=greedy(20), system="You tell stories.")
    session.reply("Tell me a story.", lambda *a: None)
    full = len(pair.encode(session.prompt("And then?")))
    reply = session.reply("And then?", lambda *a: None)
    assert reply.stats.prompt_tokens < full / 2
    assert session.messages[0] == {"role": "user", "content": "Tell me a story."}
    assert pair.tokenizer.decode(pair.encode(session.prompt("x"))).startswith("system: You tell stories.")


def test_piped_output_is_plain_and_stats_go_to_stderr(stories_path):
    # a fixed k: the model drafting for itself costs what it saves, so adaptive k would not draft
    result = chat("--target", stories_path, "--draft", stories_path, "--k", 3, "--max-tokens", 20, "--seed", 1,
                  input="Once upon a time\n")
    assert result.exit_code == 0
    assert "\x1b[" not in result.output
    assert "tok/s" not in result.stdout and "tok/s" in result.stderr
    assert "τ" in result.stderr and "accepted" in result.stderr and "k " in result.stderr


def test_stats_command_prints_the_full_block(stories_path):
    result = chat("--target", stories_path, "--draft", "ngram", "--k", 2, "--max-tokens", 15,
                  input="Once upon a time\nShe smiled\n/stats\n")
    assert result.exit_code == 0
    block = result.stdout
    for label in ("last reply", "conversation (2 replies)", "acceptance rate", "τ (tokens/round)",
                  "k chosen", "by source", "time split", "peak memory"):
        assert label in block


def test_reset_forgets_the_conversation(stories_path):
    result = chat("--target", stories_path, "--temp", 0, "--max-tokens", 10,
                  input="Once upon a time\n/reset\nOnce upon a time\n")
    assert "conversation cleared" in result.stderr
    assert prefilled(result.stderr) == [5, 5]  # nothing reused after /reset
    replies = [line for line in result.stdout.split("\n") if line]
    assert replies[0] == replies[1]


def test_exit_command_and_end_of_input_end_the_chat(stories_path):
    result = chat("--target", stories_path, "--max-tokens", 5, input="/exit\nOnce upon a time\n")
    assert result.exit_code == 0 and result.stdout == "" and generated(result.stderr) == []
    result = chat("--target", stories_path, "--max-tokens", 5, input="")
    assert result.exit_code == 0


def test_unknown_command_and_blank_lines_are_harmless(stories_path):
    result = chat("--target", stories_path, "--max-tokens", 5, input="\n   \n/frobnicate\n/help\n")
    assert result.exit_code == 0
    assert "unknown command /frobnicate" in result.stderr and "/system TEXT" in result.stderr


def test_system_command_sets_the_system_prompt(cli_chat_model):
    result = chat("--target", cli_chat_model, "--max-tokens", 5, "--temp", 0,
                  input="/system Be brief.\nHello\n/system\n")
    assert "system prompt set: Be brief." in result.stderr and "system prompt cleared" in result.stderr


def test_a_full_context_is_reported_and_reset_recovers(stories_pair):
    stories_pair.context_length = 40  # (512 for real: same logic, 10x the tokens)
    session = ChatSession(stories_pair, sampling=greedy(100))
    out, err = io.StringIO(), io.StringIO()
    script = "Once upon a time\nmore\n/reset\nOnce upon a time\n"
    assert run_chat(session, ChatIO(io.StringIO(script), out, err)) == 0
    notes = err.getvalue()
    assert "context (40 tokens) is full" in notes  # reply 1 stops at the context's end
    assert re.search(r"error: the conversation \(4\d tokens\) fills the model's context of 40 tokens", notes)
    assert "hint: type /reset" in notes
    assert "conversation cleared" in notes
    assert [s.generated_tokens for s in session.replies] == [35]  # after /reset: a fresh start
    first, again = out.getvalue().splitlines()
    assert first == again


def test_no_template_model_is_chatted_with_as_plain_text(stories_pair):
    session = ChatSession(stories_pair, sampling=greedy(10))
    assert not session.templated
    reply = session.reply("Once upon a time", lambda *a: None)
    assert session.prompt("She ran") == "Once upon a time" + reply.text + " She ran"


# -- Ctrl-C -------------------------------------------------------------------------------
def test_cancel_mid_reply_keeps_the_partial_reply_and_the_caches_consistent(stories_path, stories_pair):
    session = ChatSession(stories_pair, sampling=greedy(60))
    rounds = []

    def on_text(text, tokens, drafted):
        rounds.append(text)
        if len(rounds) == 2:
            session.cancel()

    reply = session.reply("Once upon a time", on_text)
    assert reply.interrupted and len(rounds) == 2 and reply.text == "".join(rounds)
    assert reply.stats.generated_tokens < 60
    assert session.messages[-1] == {"role": "assistant", "content": reply.text}

    text = session.prompt("The dog")
    assert text == "Once upon a time" + reply.text + " The dog"
    nxt = session.reply("The dog", lambda *a: None)
    assert nxt.stats.prompt_tokens < 8  # the cancelled turn is still in the caches
    fresh = load_pair(str(stories_path)).generate(text, max_tokens=60, chat=False)
    assert nxt.text == fresh.text  # same output as a fresh model on the same text


def test_a_hard_interrupt_inside_a_round_is_recovered(stories_path, stories_pair, monkeypatch):
    # A second Ctrl-C lands while the target verifies: the caches already hold the round's
    # unverified entries. The next turn must still continue exactly as a fresh model would.
    from mlx_spec import decode

    real, calls = decode.host_sync, []

    def interrupted_sync(values):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(values)

    monkeypatch.setattr(decode, "host_sync", interrupted_sync)
    session = ChatSession(stories_pair, sampling=greedy(40))
    reply = session.reply("Once upon a time", lambda *a: None)
    assert reply.interrupted and reply.stats.rounds == 2
    monkeypatch.setattr(decode, "host_sync", real)
    text = session.prompt("The dog")
    nxt = session.reply("The dog", lambda *a: None)
    fresh = load_pair(str(stories_path)).generate(text, max_tokens=40, chat=False)
    assert nxt.text == fresh.text


def test_the_loop_prints_a_note_after_a_stopped_reply(stories_pair):
    session = ChatSession(stories_pair, sampling=greedy(40))
    out, err = io.StringIO(), io.StringIO()

    class CancellingOut(io.StringIO):
        def write(self, text):
            session.cancel()
            return out.write(text)

    code = run_chat(session, ChatIO(io.StringIO("Once upon a time\n"), CancellingOut(), err))
    assert code == 0
    assert "[stopped; the partial reply stays in the conversation]" in err.getvalue()
    assert session.replies[0].generated_tokens < 40


def test_ctrl_c_at_the_prompt_twice_leaves(stories_pair):
    class Interrupting(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    err = io.StringIO()
    code = run_chat(ChatSession(stories_pair), ChatIO(Interrupting(), io.StringIO(), err))
    assert code == 0 and "Ctrl-C again" in err.getvalue()


# -- drafted tokens shown distinguishably -------------------------------------------------
def test_terminal_output_colours_drafted_tokens_only(stories_pair):
    painter = Painter(stories_pair.tokenizer, color=True)
    ids = stories_pair.encode("Once upon a time", chat=False)
    painter.start(ids)
    coloured, plain = [], []
    for step in stories_pair.stream(ids, max_tokens=30):
        coloured.append(painter.paint(step.text, step.tokens, step.drafted))
        plain.append(step.text)
    text = "".join(coloured)
    assert ANSI.sub("", text) == "".join(plain)
    assert DRAFTED_ANSI in text
    # per token, not per round: the target's own token (correction or bonus) that ends a
    # round is left plain after the coloured drafted ones
    assert any(re.search(r"\x1b\[0m[^\x1b]+$", piece) for piece in coloured)


def test_no_colour_when_not_a_terminal(stories_pair):
    painter = Painter(stories_pair.tokenizer, color=False)
    assert painter.paint("abc", [1, 2], [True, False]) == "abc"
