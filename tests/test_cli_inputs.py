"""Bad input to `generate` and `chat` loses nothing: one error line and a hint before anything
loads, a trace file that survives a failed run, text that is not UTF-8, a reader that leaves
(`| head`), and a chat turn that fails without ending the conversation."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mlx_spec.cli import app
from mlx_spec.stats import Stats

PROMPT = "Once upon a time"
NOT_UTF8 = b"Once \xff\xfe upon"


def run(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def assert_clean_error(result, *fragments, code=1):
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and "\nhint: " in result.stderr, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


def cli_process(*args, stdin=None, stdout=subprocess.PIPE):
    """The CLI in a process of its own (real stdin bytes, argv bytes, a real pipe)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", "from mlx_spec.cli import app; app()", *args],
                          input=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=60)


# -- --trace ------------------------------------------------------------------------------
def test_a_failed_run_leaves_an_existing_trace_file_untouched(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("keep\n")
    result = run("generate", "hi", "--target", tmp_path / "nowhere", "--no-draft", "--trace", trace)
    assert_clean_error(result)  # the missing model
    assert trace.read_text() == "keep\n"


def test_a_trace_in_a_missing_folder_is_refused_and_no_folder_is_made(tmp_path):
    result = run("generate", "hi", "--target", tmp_path / "nowhere", "--trace", tmp_path / "no" / "t.jsonl")
    assert_clean_error(result, "cannot write the trace", "does not exist")
    assert not (tmp_path / "no").exists()


def test_a_folder_given_as_the_trace_is_refused(tmp_path):
    result = run("generate", "hi", "--target", tmp_path / "nowhere", "--trace", tmp_path)
    assert_clean_error(result, "cannot write the trace", "is a folder")


def test_ctrl_c_writes_the_rounds_done_so_far_as_a_partial_trace(stories_path, tmp_path, monkeypatch):
    from mlx_spec.pair import Pair

    real = Pair.stream

    def interrupted(self, *args, **kwargs):
        for i, step in enumerate(real(self, *args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield step

    monkeypatch.setattr(Pair, "stream", interrupted)
    trace = tmp_path / "t.jsonl"
    trace.write_text("keep\n")
    result = run("generate", PROMPT, "--raw", "--target", stories_path, "--draft", "ngram", "--k", 2,
                 "--max-tokens", 100, "--trace", trace)
    assert result.exit_code == 130 and "Traceback" not in result.output
    rounds = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(rounds) >= 3 and rounds[0]["round"] == 0
    assert "partial trace" in result.stderr


# -- text that is not UTF-8 ---------------------------------------------------------------
def test_generate_reads_stdin_that_is_not_utf8_with_replacement_characters(stories_path):
    result = run("generate", "-", "--raw", "--target", stories_path, "--no-draft", "--max-tokens", 5,
                 input=NOT_UTF8 + b"\n")
    assert result.exit_code == 0, result.output
    assert "5 tokens at" in result.stderr


def test_generate_reads_a_prompt_argument_that_is_not_utf8(stories_path):
    done = cli_process(b"generate", NOT_UTF8, b"--raw", b"--target", bytes(stories_path),
                       b"--no-draft", b"--max-tokens", b"5", b"--system", b"\xff")
    assert done.returncode == 0, done.stderr.decode()
    assert b"5 tokens at" in done.stderr


def test_chat_reads_lines_that_are_not_utf8_and_answers_the_next_one(stories_path):
    result = CliRunner().invoke(app, ["chat", "--target", str(stories_path), "--no-draft",
                                      "--max-tokens", "5"], input=NOT_UTF8 + b"\nhello\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("5 tokens at") == 2


# -- a chat turn that fails ---------------------------------------------------------------
@pytest.fixture
def failing_session(stories_path):
    """A chat session whose pair fails on any message containing 'boom'."""
    from mlx_spec.chat import ChatSession, Sampling
    from mlx_spec.pair import load_pair

    pair = load_pair(str(stories_path))
    encode = pair.encode

    def fragile(prompt, *args, **kwargs):
        if isinstance(prompt, str) and "boom" in prompt:
            raise RuntimeError("something broke")
        return encode(prompt, *args, **kwargs)

    pair.encode = fragile
    return ChatSession(pair, sampling=Sampling(max_tokens=5, temperature=0.0))


@pytest.mark.parametrize("interactive,code", [(False, 1), (True, 0)])
def test_an_unexpected_error_drops_only_its_turn_and_the_chat_goes_on(failing_session, interactive, code):
    from mlx_spec.chat import ChatIO, run_chat

    err = io.StringIO()
    script = io.StringIO("Once upon a time\nboom\nThe dog\n")
    assert run_chat(failing_session, ChatIO(script, io.StringIO(), err, interactive=interactive)) == code
    lines = [line for line in err.getvalue().splitlines() if "unexpected" in line]
    assert len(lines) == 1 and lines[0].startswith("error: unexpected RuntimeError: something broke")
    users = [m["content"] for m in failing_session.messages if m["role"] == "user"]
    assert users == ["Once upon a time", "The dog"]  # the turn before it kept, the one after answered


# -- a reader that leaves (`| head`) ------------------------------------------------------
@pytest.mark.parametrize("command,stdin", [
    (["generate", PROMPT, "--raw"], None),
    (["chat"], b"Once upon a time\n"),
])
def test_a_closed_output_pipe_ends_quietly_with_the_sigpipe_status(stories_path, command, stdin):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first token: every write finds a broken pipe
    try:
        done = cli_process(*command, "--target", str(stories_path), "--no-draft", "--max-tokens", "50",
                           stdin=stdin, stdout=write)
    finally:
        os.close(write)
    assert done.returncode == 141
    assert b"error" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr.decode()


def test_a_closed_output_pipe_still_writes_the_rounds_done_to_the_trace(stories_path, tmp_path):
    read, write = os.pipe()
    os.close(read)
    trace = tmp_path / "t.jsonl"
    try:
        done = cli_process("generate", PROMPT, "--raw", "--target", str(stories_path), "--no-draft",
                           "--max-tokens", "50", "--trace", str(trace), stdout=write)
    finally:
        os.close(write)
    assert done.returncode == 141 and b"partial trace" in done.stderr, done.stderr.decode()
    assert json.loads(trace.read_text().splitlines()[0])["round"] == 0


# -- option checks before anything loads --------------------------------------------------
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_negative_seed_is_refused_before_loading(command, tmp_path):
    args = [command, PROMPT] if command == "generate" else [command]
    result = run(*args, "--target", tmp_path / "nowhere", "--seed", -1, "--temp", 0.7, input="")
    assert_clean_error(result, "--seed must be 0 or more, got -1")


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_an_empty_draft_reference_is_refused_as_an_empty_target_is(command, tmp_path):
    args = [command, PROMPT] if command == "generate" else [command]
    result = run(*args, "--target", tmp_path / "nowhere", "--draft", "", input="")
    assert_clean_error(result, "empty model reference", "--draft")


def test_generate_context_overflow_hint_does_not_mention_chat_commands(stories_path):
    result = run("generate", "hi", "--target", stories_path, "--no-draft", "--max-tokens", 1000)
    assert_clean_error(result, "exceeds the model's context of 512 tokens", "--max-tokens")
    assert "/reset" not in result.stderr


# -- the stats line -----------------------------------------------------------------------
def test_a_fixed_k_shows_its_free_tail_apart_from_k():
    from mlx_spec.render import summary_line

    stats = Stats(rounds=10, drafted=56, accepted=40, tail_proposed=16, generated_tokens=50)
    assert "k 4.0 + tail 1.6 (fixed 4)" in summary_line(stats, "fixed 4")


def test_adaptive_k_line_is_unchanged():
    from mlx_spec.render import summary_line

    stats = Stats(rounds=10, drafted=32, accepted=20, generated_tokens=30)
    assert "k 3.2 (adaptive ≤8)" in summary_line(stats, "adaptive ≤8")
    assert "tail" not in summary_line(stats, "adaptive ≤8")


def test_a_conversation_adds_up_the_tails_of_its_replies():
    from mlx_spec.render import combine

    replies = [Stats(rounds=5, drafted=28, tail_proposed=8), Stats(rounds=5, drafted=28, tail_proposed=8)]
    assert combine(replies).tail_proposed == 16


def test_ctrl_c_while_the_command_is_still_starting_exits_130_without_a_traceback(monkeypatch,
                                                                                  capsys):
    import builtins

    from mlx_spec.__main__ import main

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):  # Ctrl-C lands while the CLI's modules load
        if name == "mlx_spec.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 130
    assert capsys.readouterr().err == ""


def test_the_console_script_and_python_m_run_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "mlx_spec", "--version"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("mlx-spec ")
