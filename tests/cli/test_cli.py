"""The command line as real subprocesses: chat (piped stdin, --json, conversations, Ctrl-C), models,
providers and providers check, logs, config and keys, and one-line errors. Upstreams are the
OpenAI fake replica (on a loop of its own, as a remote service would be) and the embedded model."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.replicas.openai_fake import OpenAIFake
from tests.replicas.threaded import threaded
from tests.support.cli_process import CLI, RUN_TIMEOUT

pytestmark = [pytest.mark.process]

STORED_KEY = "sk-stored-cli-key-8d2e4b"


@pytest.fixture
def fake() -> Iterator[OpenAIFake]:
    with threaded(OpenAIFake()) as replica:
        yield replica


def fake_config(fake: OpenAIFake, **provider: Any) -> dict[str, Any]:
    return {
        "providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small", "fake-large"], **provider},
                      "dead": {"base_url": "http://127.0.0.1:9/v1", "models": ["nothing"]}},
        "routes": {"small": ["fake/fake-small"], "large": ["fake/fake-large"]},
    }


@pytest.fixture
def cli(tmp_path: Path, fake: OpenAIFake) -> CLI:
    runner = CLI(tmp_path)
    runner.configure(fake_config(fake))
    return runner


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- chat -----------------------------------------------------------------------------------------------


def test_chat_streams_the_answer_from_the_first_route(cli: CLI, fake: OpenAIFake) -> None:
    result = cli.run("chat", "Hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == fake.answer + "\n"  # not a terminal: plain text, no Markdown rendering
    assert result.stderr == ""
    assert fake.last_body["model"] == "fake-small" and fake.last_body["stream"] is True


def test_piped_prompt_and_json_output(cli: CLI, fake: OpenAIFake) -> None:
    result = cli.run("chat", "-m", "large", "-s", "Be terse.", "--temperature", "0.3", "--max-tokens", "50",
                     "--json", input="What is 6 x 7?\n")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["text"] == fake.answer
    assert (answer["provider"], answer["model"], answer["finish_reason"]) == ("fake", "fake-large", "stop")
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    assert 0 <= answer["timings"]["first_text_s"] <= answer["timings"]["total_s"]
    assert answer["conversation_id"]
    body = fake.last_body
    assert body["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "What is 6 x 7?"}]
    assert (body["temperature"], body["max_tokens"]) == (0.3, 50)


def test_each_chat_is_logged_and_continue_sends_the_history(cli: CLI, fake: OpenAIFake) -> None:
    first = json.loads(cli.run("chat", "echo:first answer", "-s", "sys", "--json").stdout)
    other = json.loads(cli.run("chat", "echo:another conversation", "--json").stdout)
    assert first["conversation_id"] != other["conversation_id"]

    assert cli.run("chat", "-c", "and then?").returncode == 0
    assert fake.last_body["messages"] == [
        {"role": "user", "content": "echo:another conversation"},
        {"role": "assistant", "content": "another conversation"},
        {"role": "user", "content": "and then?"},
    ]
    resumed = cli.run("chat", "--conversation", first["conversation_id"], "--json", input="next")
    assert json.loads(resumed.stdout)["conversation_id"] == first["conversation_id"]
    assert [m["content"] for m in fake.last_body["messages"]] == ["sys", "echo:first answer", "first answer", "next"]

    with cli.log() as log:
        rows = log.latest(0)
        assert [row.prompt for row in rows] == ["next", "and then?", "echo:another conversation",
                                                "echo:first answer"]
        assert all(row.source == "cli" and row.provider == "fake" and row.response for row in rows)
        assert rows[0].requested_model == "small" and rows[0].latency is not None and rows[0].ttft is not None
        assert len(log.conversation(first["conversation_id"])) == 2


def test_no_log_and_the_config_switch_turn_the_log_off(cli: CLI) -> None:
    assert cli.run("chat", "--no-log", "Hello").returncode == 0
    assert not cli.log_path.exists()
    assert cli.run("chat", "Hello", env={"PATCHBAY_REQUEST_LOG": "false"}).returncode == 0
    assert not cli.log_path.exists()
    error = one_error_line(cli.run("chat", "-c", "more", env={"PATCHBAY_REQUEST_LOG": "false"}))
    assert "request log" in error


def test_continue_with_nothing_to_continue_is_one_error_line(cli: CLI) -> None:
    nothing = cli.run("chat", "-c", "hi")
    assert "no conversation to continue" in one_error_line(nothing) and nothing.returncode == 1
    unknown = cli.run("chat", "--conversation", "nope", "hi")
    assert "no conversation 'nope'" in one_error_line(unknown) and unknown.returncode == 1


def test_a_named_provider_is_asked_directly(cli: CLI, fake: OpenAIFake) -> None:
    result = cli.run("chat", "-p", "fake", "-m", "fake-large", "--json", "Hi")
    assert json.loads(result.stdout)["model"] == "fake-large"
    assert fake.last_body["model"] == "fake-large"


def test_errors_are_one_line_and_verbose_adds_the_cause(cli: CLI) -> None:
    assert "no route for model 'nope'; routes: small, large" in one_error_line(cli.run("chat", "-m", "nope", "x"))
    assert "No such option '--bogus'" in one_error_line(cli.run("chat", "--bogus"))
    assert "unknown provider 'Nobody'" in one_error_line(cli.run("chat", "-p", "Nobody", "x"))
    refused = cli.run("chat", "-p", "dead", "x")
    assert "connection failed" in one_error_line(refused) and refused.returncode == 1
    verbose = cli.run("chat", "-p", "dead", "x", "--verbose")
    assert verbose.returncode == 1
    assert verbose.stderr.splitlines()[1].startswith("  caused by: ConnectError")  # the transport's own class
    with cli.log() as log:  # the failures are in the log too, with their error
        assert (log.latest(1)[0].error or "").startswith("ConnectionFailed")


def test_an_empty_piped_prompt_is_a_usage_error(cli: CLI) -> None:
    result = cli.run("chat", input="   \n")
    assert result.returncode == 2 and "the prompt read from stdin is empty" in one_error_line(result)


@pytest.mark.parametrize("prompt", ["", "  \n "])
def test_an_empty_prompt_argument_is_a_usage_error(cli: CLI, fake: OpenAIFake, prompt: str) -> None:
    result = cli.run("chat", prompt)
    assert result.returncode == 2 and "the prompt is empty" in one_error_line(result)
    assert fake.chat_count == 0 and not cli.log_path.exists()  # nothing was asked, nothing recorded


def test_one_exit_status_per_kind_of_failure(cli: CLI) -> None:
    """2: the command line itself is wrong; 1: a well-formed command failed as it ran."""
    usage = [("chat", "--bogus"), ("chat", "--temperature", "9", "x"), ("chat", ""), ("logs", "show", "one"),
             ("serve", "--port", "99999"), ("keys", "set")]
    for args in usage:
        result = cli.run(*args)
        assert result.returncode == 2, (args, result.stderr)
        one_error_line(result)
    failed = [("chat", "-m", "nope", "x"), ("chat", "-p", "Nobody", "x"), ("chat", "-p", "dead", "x"),
              ("chat", "--conversation", "nope", "x"), ("models", "--provider", "nobody"), ("logs", "show", "99"),
              ("providers", "check", "nobody"), ("keys", "remove", "NOT_STORED")]
    for args in failed:
        result = cli.run(*args)
        assert result.returncode == 1, (args, result.stderr)
        one_error_line(result)


def test_a_preset_without_its_key_says_the_key_is_missing(tmp_path: Path) -> None:
    """No key: the error says so before anything is sent (not "connection failed" from asking the
    service for its models), with or without a [providers] entry for the preset."""
    (tmp_path / "bare").mkdir()
    (tmp_path / "configured").mkdir()
    bare = CLI(tmp_path / "bare")
    configured = CLI(tmp_path / "configured")
    configured.configure({"providers": {"groq": {"preset": "groq"}}})
    for cli in (bare, configured):
        for args in (("chat", "-p", "groq", "Hi"), ("chat", "-p", "groq", "-m", "llama-3.1-8b-instant", "Hi")):
            result = cli.run(*args, env={"GROQ_API_KEY": ""})
            error = one_error_line(result)
            assert result.returncode == 1 and "needs an API key" in error and "GROQ_API_KEY" in error, error
            assert "connection" not in error


def test_a_bare_provider_name_in_a_route_asks_for_its_default_model(tmp_path: Path, fake: OpenAIFake) -> None:
    cli = CLI(tmp_path)
    config = fake_config(fake)
    config["routes"] = {"fast": ["dead/nothing", "fake"], "pinned": [{"provider": "fake", "weight": 2}]}
    cli.configure(config)
    for route in ("fast", "pinned"):
        result = cli.run("chat", "-m", route, "--json", "Hi")
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert (answer["provider"], answer["model"]) == ("fake", "fake-small")  # its first model, not the route
        assert fake.last_body["model"] == "fake-small"


def test_ctrl_c_stops_the_stream_and_records_what_arrived(tmp_path: Path) -> None:
    with threaded(OpenAIFake("stall")) as stalled:  # half the answer, then silence
        stalled.stall_seconds = 60.0  # longer than Ctrl-C can take to arrive, however busy the machine
        cli = CLI(tmp_path)
        cli.configure(fake_config(stalled))
        process = subprocess.Popen(cli.command("chat", "Hello"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=cli.env, cwd=cli.cwd)
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], RUN_TIMEOUT)
            assert ready, "no text arrived"
            first = os.read(process.stdout.fileno(), 1000).decode()
            assert first and stalled.answer.startswith(first)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    shown = (first + stdout.decode()).rstrip("\n")
    assert process.returncode == 130
    assert stderr.decode().strip() == "Interrupted."
    with cli.log() as log:
        row = log.latest(1)[0]
    assert (row.error or "").startswith("Interrupted")
    assert row.response == shown and stalled.answer.startswith(shown) and shown != stalled.answer


def test_the_embedded_model_answers_with_no_configuration(tmp_path: Path) -> None:
    cli = CLI(tmp_path)
    result = cli.run("chat", "--json", "--temperature", "0", "--max-tokens", "16",
                     input="What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    answer = json.loads(result.stdout)
    assert answer["provider"] == "Local" and answer["model"] == "smollm2-135m-instruct"
    # An answer arrives; its words depend on the CPU's kernels and the sampling defaults, so they
    # are not asserted.
    assert answer["text"].strip() and 0 < answer["usage"]["completion_tokens"] <= 16
    with cli.log() as log:
        assert log.latest(1)[0].response == answer["text"]


async def test_the_spinner_and_model_switches_name_who_is_asked(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: who a conversation asks first, and /model checked before it switches."""
    from patchbay.cli.chat import Conversation
    from patchbay.errors import ModelNotSupported
    from patchbay.settings import load_settings

    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path))
    path = tmp_path / "patchbay.toml"
    for routes, expected in (("", "Local/smollm2-135m-instruct"),
                             ("[routes]\nfast = ['Local']\n", "Local/smollm2-135m-instruct"),
                             ("[routes]\nany = ['Local/smollm2']\n'*' = ['Local']\n", "Local/smollm2")):
        path.write_text(routes, encoding="utf-8")
        chat = Conversation(load_settings(path, environ={}), None, provider_name=None, model=None, system=None,
                            options={}, base_url=None)
        assert chat.first_target() == expected
    with pytest.raises(ModelNotSupported):
        await chat.switch_model("nope")
    assert chat.model == "any" and chat.first_target() == "Local/smollm2"  # the old model stays
    assert await chat.switch_model("smollm2-135m-instruct") is None  # the catch-all passes it on
    assert chat.first_target() == "Local/smollm2-135m-instruct"


# -- models and providers -------------------------------------------------------------------------------


def test_models_lists_the_catalog_and_configured_services(cli: CLI) -> None:
    listed = json.loads(cli.run("models", "--json").stdout)
    by_key = {(m["provider"], m["model"]): m for m in listed}
    local = by_key[("Local", "smollm2-135m-instruct")]
    assert local["context_window"] == 8192 and local["prefill"] and local["streaming"]
    assert ("fake", "fake-large") in by_key
    table = cli.run("models", "--provider", "FAKE")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["provider", "model", "context", "max", "output", "capabilities"]
    assert [line.split()[:2] for line in lines[1:]] == [["fake", "fake-large"], ["fake", "fake-small"]]
    unknown = cli.run("models", "--provider", "nobody")
    assert "no models for provider 'nobody'" in one_error_line(unknown) and unknown.returncode == 1


def test_providers_check_probes_concurrently_and_providers_shows_the_result(cli: CLI, fake: OpenAIFake) -> None:
    result = cli.run("providers", "check", "--timeout", "5")
    assert result.returncode == 1  # dead failed
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {"fake", "dead"}
    assert lines["fake"].split()[1] == "ok" and "FAILED" in lines["dead"] and "connection failed" in lines["dead"]
    assert fake.last_body["max_tokens"] == 8  # a tiny probe

    only_fake = cli.run("providers", "check", "fake", "--json")
    assert only_fake.returncode == 0
    [check] = json.loads(only_fake.stdout)
    assert check["ok"] and check["provider"] == "fake" and 0 < check["ttft"] <= check["total"]

    rows = {row["name"]: row for row in json.loads(cli.run("providers", "--json").stdout)}
    assert rows["fake"]["last_check"]["ok"] is True
    assert rows["dead"]["last_check"]["ok"] is False and "connection failed" in rows["dead"]["last_check"]["error"]
    assert rows["Local"]["last_check"] is None and rows["Local"]["working"] and len(rows["Local"]["models"]) == 1
    table = cli.run("providers").stdout
    assert any(line.startswith("dead") and "failed" in line for line in table.splitlines())


def test_providers_check_keeps_going_when_providers_fail_and_probes_only_the_names_given(
        tmp_path: Path, fake: OpenAIFake) -> None:
    """Each failure is its own row: a missing key, a refused port, a provider that needs
    configuration, an unknown provider in a route, a service that never answers its model list
    (within --timeout, not after the listing's own 5 s). Named providers are the only ones asked."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    try:
        cli = CLI(tmp_path)
        cli.configure({
            "providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small"]},
                          "dead": {"base_url": "http://127.0.0.1:9/v1", "models": ["nothing"]},
                          "keyless": {"preset": "openai", "base_url": "http://127.0.0.1:9/v1",
                                      "api_key_env": "PATCHBAY_TEST_NO_SUCH_KEY"},
                          "unset": {"models": ["m"]},
                          "mute": {"base_url": f"http://127.0.0.1:{silent.getsockname()[1]}/v1"}},
            "routes": {"small": ["fake/fake-small"], "lost": ["Nowhere/model"]},
        })
        result = cli.run("providers", "check", "--timeout", "2", "--json")
        assert result.returncode == 1 and result.stderr == "", result.stderr
        rows = {row["provider"]: row for row in json.loads(result.stdout)}
        assert set(rows) == {"fake", "dead", "keyless", "unset", "mute", "Nowhere"}
        assert rows["fake"]["ok"] and rows["fake"]["error"] is None
        assert "connection failed" in rows["dead"]["error"]
        keyless = rows["keyless"]["error"]
        assert "needs an API key" in keyless and "PATCHBAY_TEST_NO_SUCH_KEY" in keyless
        assert "base_url" in rows["unset"]["error"]
        assert "unknown provider 'Nowhere'" in rows["Nowhere"]["error"]
        assert rows["mute"]["error"] == "no answer within 2 s"
        assert not any(row["ok"] for name, row in rows.items() if name != "fake")

        table = cli.run("providers", "check", "--timeout", "2")  # not a terminal: a line per provider
        lines = {line.split()[0]: line for line in table.stdout.splitlines()}
        assert set(lines) == set(rows) and "FAILED" in lines["keyless"] and "needs an API key" in lines["keyless"]

        asked = fake.chat_count
        only = cli.run("providers", "check", "dead", "KEYLESS", "--json")
        assert only.returncode == 1
        assert [row["provider"] for row in json.loads(only.stdout)] == ["dead", "keyless"]
        assert fake.chat_count == asked  # the others were not probed
    finally:
        silent.close()


def test_providers_check_a_name_that_does_not_exist(cli: CLI) -> None:
    assert "unknown provider 'nobody'" in one_error_line(cli.run("providers", "check", "nobody"))


def test_providers_check_the_embedded_model_with_no_configuration(tmp_path: Path) -> None:
    result = CLI(tmp_path).run("providers", "check", "--json")
    assert result.returncode == 0, result.stderr
    [check] = json.loads(result.stdout)
    assert check["provider"] == "Local" and check["ok"] and check["error"] is None


def test_providers_shows_live_health_from_the_shared_router_state(cli: CLI, redis_url: str) -> None:
    env = {"PATCHBAY_REDIS_URL": redis_url}
    assert cli.run("chat", "Hello", env=env).returncode == 0
    assert cli.run("chat", "-m", "large", "Hello", env=env).returncode == 0
    rows = {row["name"]: row for row in json.loads(cli.run("providers", "--json", env=env).stdout)}
    assert rows["fake"]["health"] == {"successes": 2, "failures": 0, "cooling_down": False, "last_error": None}
    assert rows["Local"]["health"] is None


# -- logs -----------------------------------------------------------------------------------------------


def test_logs_list_search_json_and_show(cli: CLI, fake: OpenAIFake) -> None:
    assert cli.run("logs").stderr.strip() == "No exchanges logged yet."
    assert not cli.log_path.exists()  # reading does not create the database
    for prompt in ("echo:one apple", "echo:two pears", "echo:three apples"):
        assert cli.run("chat", prompt).returncode == 0

    listed = cli.run("logs", "-n", "2").stdout.splitlines()
    assert listed[0].split()[:3] == ["id", "time", "model"] and len(listed) == 3
    assert listed[1].split()[0] == "3" and "three apples" in listed[1] and "fake/fake-small" in listed[1]

    found = json.loads(cli.run("logs", "-q", "APPLE", "--json").stdout)
    assert [row["response"] for row in found] == ["three apples", "one apple"]
    assert found[0]["messages"] == [{"role": "user", "content": "echo:three apples"}]

    shown = cli.run("logs", "show", "2").stdout
    assert "answered by:     fake/fake-small" in shown and "[user] echo:two pears" in shown
    assert shown.rstrip().endswith("two pears")
    assert json.loads(cli.run("logs", "show", "2", "--json").stdout)["id"] == 2
    assert "no exchange 99" in one_error_line(cli.run("logs", "show", "99"))
    assert cli.run("logs", "path").stdout.strip() == str(cli.log_path)


# -- config and keys ------------------------------------------------------------------------------------


def test_config_path_and_show(cli: CLI, fake: OpenAIFake) -> None:
    assert cli.run("config", "path").stdout.strip() == str(cli.home / "config.toml")
    shown = cli.run("config", "show", env={"PATCHBAY_PORT": "9123", "PATCHBAY_CACHE_ENABLED": "true"})
    assert shown.stdout.startswith(f"# from {cli.home / 'config.toml'}")
    settings = tomllib.loads(shown.stdout)
    assert settings["server"]["port"] == 9123 and settings["server"]["request_log"] is True
    assert settings["cache"]["enabled"] is True and settings["tracing"]["content"] is False
    assert settings["providers"]["fake"]["base_url"] == fake.api_base
    assert settings["routes"] == {"small": ["fake/fake-small"], "large": ["fake/fake-large"]}
    as_json = json.loads(cli.run("config", "show", "--json").stdout)
    assert as_json["router"]["strategy"] == "priority"


def test_keys_are_stored_privately_shown_masked_and_used_as_credentials(tmp_path: Path, fake: OpenAIFake) -> None:
    fake.api_key = STORED_KEY
    cli = CLI(tmp_path)
    cli.configure(fake_config(fake, api_key_env="FAKE_API_KEY"))
    assert "AuthError (401)" in one_error_line(cli.run("chat", "Hello"))  # no key anywhere yet

    stored = cli.run("keys", "set", "FAKE_API_KEY", input=STORED_KEY + "\n")
    assert stored.returncode == 0, stored.stderr
    path = cli.home / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"FAKE_API_KEY": STORED_KEY}
    listed = cli.run("keys", "list")
    assert STORED_KEY not in listed.stdout and "FAKE_API_KEY" in listed.stdout and "sk-…4b" in listed.stdout
    assert cli.run("keys", "path").stdout.strip() == str(path)

    assert cli.run("chat", "Hello").stdout.strip() == fake.answer  # the stored key stands in for $FAKE_API_KEY
    with cli.log() as log:
        assert STORED_KEY not in json.dumps([row.to_dict() for row in log.latest(0)])

    assert cli.run("keys", "remove", "FAKE_API_KEY").returncode == 0
    assert json.loads(cli.run("keys", "list", "--json").stdout) == {}
    assert "no key named 'FAKE_API_KEY'" in one_error_line(cli.run("keys", "remove", "FAKE_API_KEY"))
    assert "invalid key name" in one_error_line(cli.run("keys", "set", "not a name", input="x"))


# -- serve ----------------------------------------------------------------------------------------------


def test_serve_on_a_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        result = CLI(tmp_path).run("serve", "--port", str(port))
    finally:
        taken.close()
    assert result.returncode == 1
    error = one_error_line(result)  # and nothing else: no "running on" line before it
    assert f"127.0.0.1:{port}" in error and "cannot listen" in error
    assert result.stdout == ""


def test_serve_has_no_short_config_option(tmp_path: Path) -> None:
    """``-c`` means --continue (chat); serve spells --config out."""
    result = CLI(tmp_path).run("serve", "-c", "patchbay.toml")
    assert result.returncode == 2 and "-c" in one_error_line(result)


# -- the package ----------------------------------------------------------------------------------------


def test_importing_the_cli_has_no_side_effects(tmp_path: Path) -> None:
    code = ("import sys, patchbay.cli; "
            "print(sorted(m for m in ('rich', 'aiohttp', 'msgspec', 'llama_cpp') if m in sys.modules))")
    env = {**os.environ, "PATCHBAY_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30,
                            check=True)
    assert result.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_every_command_answers_help(tmp_path: Path) -> None:
    from patchbay.cli import cli as group

    started = time.perf_counter()
    for path in [[], *([name] for name in group.commands)]:
        result = CLI(tmp_path).run(*path, "--help")
        assert result.returncode == 0 and result.stdout.startswith("Usage: patchbay"), result.stderr
    assert time.perf_counter() - started < 60
