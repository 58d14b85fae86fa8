"""The `mlx-spec` command through typer's runner: help, generate (text, stdin, --json, chat
template), the mounted models/convert commands, and every user error as one line plus a hint."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mlx_spec.cli import app

PROMPT = "Once upon a time"
STORY_START = ", there was a little girl named Lily"


def run(*args, input=None, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)


def stories_args(stories_path, *extra):
    return ["--target", stories_path, *extra]


def assert_clean_error(result, *fragments, code=1):
    """Non-zero exit, 'error:' and 'hint:' lines on stderr, no traceback anywhere."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert "\nhint: " in result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


# -- help and version ---------------------------------------------------------------------
def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("chat", "generate", "models", "convert", "doctor"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [["chat"], ["generate"], ["doctor"], ["convert"],
                                     ["models", "list"], ["models", "pull"], ["models", "info"]])
def test_every_command_has_help_with_an_example(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "mlx-spec " + command[0] in result.stdout  # an example line


def test_version_names_mlx_and_mlx_lm():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("mlx-spec 0.") and "mlx " in result.stdout and "mlx-lm" in result.stdout


def test_no_arguments_shows_help():
    result = run()
    assert "Usage" in result.output and "Traceback" not in result.output


# -- generate -----------------------------------------------------------------------------
def test_generate_prints_the_completion_and_a_stats_line(stories_path):
    result = run("generate", PROMPT, *stories_args(stories_path, "--draft", stories_path,
                                                     "--k", 3, "--max-tokens", 30))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(STORY_START)
    assert "\x1b[" not in result.stdout  # piped: plain text
    assert "30 tokens at" in result.stderr and "τ" in result.stderr and "accepted" in result.stderr


def test_generate_reads_the_prompt_from_stdin(stories_path):
    result = run("generate", "-", *stories_args(stories_path, "--max-tokens", 10), input=PROMPT)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(", there was")


def test_generate_json_has_text_tokens_finish_reason_stats_and_models(stories_path):
    result = run("generate", PROMPT, "--json", *stories_args(
        stories_path, "--draft", "ngram", "--k", 4, "--max-tokens", 40))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"text", "tokens", "finish_reason", "stats", "target", "draft"}
    assert data["text"].startswith(STORY_START)
    assert len(data["tokens"]) == 40 and data["finish_reason"] == "length"
    assert data["target"] == str(stories_path) and data["draft"] == "ngram"
    for key in ("tau", "acceptance_rate", "acceptance_by_position", "k_counts", "time_split",
                "prompt_tokens", "generation_tps"):
        assert key in data["stats"]
    assert data["stats"]["generated_tokens"] == 40


def test_generate_draft_free_matches_plain_decoding(stories_path):
    plain = run("generate", PROMPT, "--json", *stories_args(stories_path, "--max-tokens", 40))
    ngram = run("generate", PROMPT, "--json", *stories_args(stories_path, "--draft", "ngram",
                                                             "--k", 4, "--max-tokens", 40))
    assert json.loads(plain.stdout)["tokens"] == json.loads(ngram.stdout)["tokens"]
    assert json.loads(plain.stdout)["draft"] is None


def test_generate_invariant_sampling_is_plain_sampling_with_any_draft(stories_path):
    """Sampling is drafter-invariant by default (--invariant): at a seed, the same sampled
    text with no draft, the n-gram, and the real model as its own draft at a fixed k or
    adaptive; another seed gives another text."""
    def sampled(*flags, seed=3):
        result = run("generate", PROMPT, "--json", "--temp", 0.9, "--seed", seed,
                     *stories_args(stories_path, "--max-tokens", 40, *flags))
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        return data["tokens"], data["stats"]["accepted"]

    plain, _ = sampled("--no-draft", "--invariant")
    drafted = [sampled(*flags) for flags in (("--draft", "ngram", "--k", 4), ("--draft", stories_path, "--k", 3),
                                             ("--draft", stories_path))]
    assert all(tokens == plain for tokens, _ in drafted)
    assert sum(accepted for _, accepted in drafted) > 10  # the drafts were accepted, not idle
    assert sampled("--no-draft", seed=4)[0] != plain


def test_generate_quick_start_opens_with_a_plain_round_and_changes_no_token(stories_path, tmp_path):
    plain = run("generate", PROMPT, "--json", *stories_args(stories_path, "--max-tokens", 40))
    runs = {}
    for flags in ((), ("--quick-start",)):
        trace = tmp_path / f"rounds{len(flags)}.jsonl"
        result = run("generate", PROMPT, "--json", "--trace", trace, *flags, *stories_args(
            stories_path, "--draft", stories_path, "--k", 3, "--max-tokens", 40))
        assert result.exit_code == 0, result.output
        first = json.loads(trace.read_text().splitlines()[0])
        runs[flags] = (json.loads(result.stdout)["tokens"], first["source"], first["k"])
    assert runs[()][0] == runs[("--quick-start",)][0] == json.loads(plain.stdout)["tokens"]
    assert runs[()][1:] == ("draft", 3)
    assert runs[("--quick-start",)][1:] == ("none", 0)


def test_generate_uses_the_chat_template_unless_raw(cli_chat_model):
    args = ("generate", PROMPT, "--json", "--target", cli_chat_model, "--max-tokens", 5)
    chat = json.loads(run(*args).stdout)
    raw = json.loads(run(*args, "--raw").stdout)
    # "user: Once upon a time\nassistant:" is longer than the bare text
    assert chat["stats"]["prompt_tokens"] > raw["stats"]["prompt_tokens"]


def test_generate_stop_string_ends_the_text(stories_path):
    result = run("generate", PROMPT, "--json", "--stop", "Lily",
                 *stories_args(stories_path, "--max-tokens", 40))
    data = json.loads(result.stdout)
    assert data["text"] == ", there was a little girl named " and data["finish_reason"] == "stop"


def test_generate_stats_flag_prints_the_full_block(stories_path):
    result = run("generate", PROMPT, "--stats", *stories_args(stories_path, "--draft", "ngram",
                                                               "--k", 2, "--max-tokens", 20))
    assert result.exit_code == 0
    for label in ("τ (tokens/round)", "acceptance rate", "by position", "time split", "bandwidth"):
        assert label in result.stderr


def test_ctrl_c_during_generate_exits_130_without_traceback(stories_path, monkeypatch):
    from mlx_spec.pair import Pair

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(Pair, "stream", interrupted)
    result = run("generate", PROMPT, *stories_args(stories_path))
    assert result.exit_code == 130 and "Traceback" not in result.output


# -- errors -------------------------------------------------------------------------------
def test_unknown_pair_names_the_known_pairs():
    result = run("generate", PROMPT, "--pair", "no-such-pair")
    assert_clean_error(result, "unknown pair 'no-such-pair'", "qwen2.5-7b")


def test_missing_model_directory(tmp_path):
    result = run("generate", PROMPT, "--target", tmp_path / "nowhere")
    assert_clean_error(result, "not found")


def test_missing_hub_model_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = run("chat", "--target", "mlx-community/not-downloaded-4bit", input="hi\n")
    assert_clean_error(result, "not available locally", "models pull")


def test_mismatched_tokenizers_are_refused(stories_path, cli_mismatched_model):
    result = run("generate", PROMPT, "--target", stories_path, "--draft", cli_mismatched_model)
    assert_clean_error(result, "disagree", "stories-swapped")


@pytest.mark.parametrize("prompt,stdin", [("", None), ("   ", None), ("-", ""), ("-", "\n\n")])
def test_empty_prompt(stories_path, prompt, stdin):
    result = run("generate", prompt, *stories_args(stories_path), input=stdin)
    assert_clean_error(result, "the prompt is empty")


def test_context_overflow(stories_path):
    result = run("generate", PROMPT, *stories_args(stories_path, "--max-tokens", 600))
    assert_clean_error(result, "exceeds the model's context of 512 tokens", "--max-tokens")


def test_a_prompt_longer_than_the_context_gets_only_the_error_and_the_hint(stories_path):
    # in a process of its own: the tokenizer's logging writes to the real stderr
    import subprocess
    import sys

    args = map(str, stories_args(stories_path, "--no-draft", "--max-tokens", "5"))
    done = subprocess.run([sys.executable, "-c", "from mlx_spec.cli import app; app()",
                           "generate", "-", "--raw", *args],
                          input="word " * 600, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("error: prompt (") and lines[1].startswith("hint: ")


@pytest.mark.parametrize("options,message", [
    (["--temp", "-1"], "--temp must be 0 or more"),
    (["--temp", "nan"], "--temp must be 0 or more"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-3"], "--top-k must be 0 or more"),
    (["--min-p", "1"], "--min-p must be in [0, 1)"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be positive"),
    (["--k", "0"], "--k must be from 1 to 16"),
    (["--k", "3", "--adaptive"], "--k and --adaptive both given"),
    (["--k-max", "99"], "--k-max must be from 1 to 16"),
    (["--no-draft", "--draft", "ngram"], "--draft and --no-draft both given"),
    (["--no-draft", "--k", "2"], "need a draft"),
    (["--pair", "qwen2.5-7b", "--target", "x"], "--pair and --target both given"),
])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_bad_option_values(command, options, message):
    args = [command, PROMPT] if command == "generate" else [command]
    result = run(*args, *options, input="")
    assert_clean_error(result, message)


def test_an_unparsable_option_is_a_usage_error_without_traceback():
    result = run("generate", PROMPT, "--temp", "warm")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--temp" in result.output


def test_bad_dtype(stories_path):
    assert_clean_error(run("generate", PROMPT, *stories_args(stories_path, "--dtype", "int3")),
                       "unknown dtype 'int3'")


def test_debug_variable_turns_tracebacks_on():
    result = run("generate", PROMPT, "--pair", "nope", env={"MLX_SPEC_DEBUG": "1"})
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_unexpected_errors_are_one_line_too(monkeypatch, stories_path):
    from mlx_spec import pair

    monkeypatch.setattr(pair, "load_pair", lambda *a, **k: 1 / 0)
    result = run("generate", PROMPT, *stories_args(stories_path))
    assert_clean_error(result, "unexpected ZeroDivisionError", "MLX_SPEC_DEBUG=1")


# -- the mounted model commands -----------------------------------------------------------
def test_models_list_is_mounted():
    result = run("models", "list")
    assert result.exit_code == 0 and "qwen2.5-7b" in result.stdout


def test_models_info_of_a_local_directory(stories_path):
    result = run("models", "info", stories_path)
    assert result.exit_code == 0 and "llama" in result.stdout


def test_models_errors_go_through_the_same_handler():
    assert_clean_error(run("models", "info", "no-such-pair-or-model"), "not a pair", "models list")
    assert_clean_error(run("models", "info", "org/absent-model"), "not on this machine",
                       "mlx-spec models pull org/absent-model")


def test_models_info_of_a_missing_pair_names_the_pair_to_pull(monkeypatch):
    import mlx_spec.models_cli

    monkeypatch.setattr(mlx_spec.models_cli, "find_local", lambda ref: None)  # whatever this machine holds
    result = run("models", "info", "qwen2.5-7b")
    assert_clean_error(result, "not on this machine", "mlx-spec models pull qwen2.5-7b")


def test_convert_is_mounted_and_reports_a_missing_file(tmp_path):
    result = run("convert", tmp_path / "missing.gguf", tmp_path / "out")
    assert_clean_error(result, "not found")
