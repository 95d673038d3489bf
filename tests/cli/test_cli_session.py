"""``patchbay chat`` with no prompt: the interactive session, driven through a pseudo-terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replicas.openai_fake import OpenAIFake
from tests.replicas.threaded import threaded
from tests.support.cli_process import CLI, RUN_TIMEOUT

pytestmark = [pytest.mark.process]

#: Every wait is for a condition (text on the terminal, a request at the fake, the process
#: ending), bounded generously so that it holds on a machine busy with other work.
READ_TIMEOUT = RUN_TIMEOUT
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")

#: Makes the pseudo-terminal the child's controlling terminal (a new session leader opening a
#: terminal acquires it), so Ctrl-C typed there interrupts it; then becomes ``patchbay``.
LAUNCHER = ("import os, sys; os.close(os.open(os.ttyname(0), os.O_RDWR)); "
            "os.execv(sys.executable, [sys.executable, '-m', 'patchbay', *sys.argv[1:]])")


class Terminal:
    """A process on a pseudo-terminal: type into it and read its screen output, always with a timeout."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                        start_new_session=True, close_fds=True)
        os.close(slave)
        self.seen = ""  # everything read so far, escape codes removed
        self._unread = 0

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = READ_TIMEOUT) -> re.Match[str]:
        """Wait until ``pattern`` appears in output not yet matched; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.seen, self._unread)
            if match:
                self._unread = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} did not appear; output:\n{self.seen[self._unread:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"the process ended before {pattern!r}; output:\n{self.seen[self._unread:]}")
                self.seen += ANSI.sub("", data.decode(errors="replace"))

    def wait(self, timeout: float = READ_TIMEOUT) -> int:
        """The exit status, once the process has ended (reading the terminal meanwhile, so that
        it never blocks writing); fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:  # keep the terminal drained
            ready, _, _ = select.select([self.master], [], [], 0.2)  # a poll interval, not a wait for anything
            if ready:
                with contextlib.suppress(OSError):
                    os.read(self.master, 65536)
        status = self.process.poll()
        assert status is not None, f"the process did not end within {timeout:g} s"
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@pytest.fixture
def fake() -> Iterator[OpenAIFake]:
    with threaded(OpenAIFake()) as replica:
        yield replica


@pytest.fixture
def session(tmp_path: Path, fake: OpenAIFake, request: pytest.FixtureRequest) -> Iterator[tuple[Terminal, CLI]]:
    """``patchbay chat`` on a terminal; parametrized indirectly, the parameter is more arguments."""
    args: list[str] = getattr(request, "param", [])
    cli = CLI(tmp_path, TERM="xterm")
    cli.configure({"providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small", "fake-large"]}},
                   "routes": {"small": ["fake/fake-small"], "large": ["fake/fake-large", "Local"]}})
    terminal = Terminal([sys.executable, "-c", LAUNCHER, "chat", *args], cli.env, cli.cwd)
    try:
        yield terminal, cli
    finally:
        terminal.close()


def wait_for(condition: object, terminal: Terminal, timeout: float = READ_TIMEOUT) -> None:
    """Wait (bounded) until ``condition()`` holds, reading the terminal meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        ready, _, _ = select.select([terminal.master], [], [], 0.05)
        if ready:
            with contextlib.suppress(OSError):
                terminal.seen += ANSI.sub("", os.read(terminal.master, 65536).decode(errors="replace"))


def test_interactive_session(session: tuple[Terminal, CLI], fake: OpenAIFake) -> None:
    terminal, cli = session
    terminal.expect(r"Chatting with small through fake/fake-small\. Type /help")
    terminal.expect(r"> ")

    terminal.type("/system Answer in one line.\r")
    terminal.expect(r"System prompt set: Answer in one line\.\n> ")

    terminal.type("echo:**bold** reply\r")
    terminal.expect(r"\nbold reply\s*\n> ")  # Markdown rendered: the asterisks are gone
    assert fake.last_body["messages"] == [{"role": "system", "content": "Answer in one line."},
                                          {"role": "user", "content": "echo:**bold** reply"}]

    terminal.type("and a second question\r")
    terminal.expect(re.escape(fake.answer) + r"\s*\n> ")
    assert [m["role"] for m in fake.last_body["messages"]] == ["system", "user", "assistant", "user"]
    assert fake.last_body["messages"][2]["content"] == "**bold** reply"

    terminal.type("/clear\r")
    terminal.expect(r"Cleared: a new conversation starts\.\n> ")
    terminal.type("/model large\r")
    terminal.expect(r"Model: large through fake/fake-large \(1 fallback\)\.\n> ")
    terminal.type("/model nope\r")  # said at once, and the model stays
    terminal.expect(r"Error: no route for model 'nope'; routes: small, large\n"
                    r"Model: large through fake/fake-large \(1 fallback\) \(unchanged\)\.\n> ")
    terminal.type("after clearing\r")
    terminal.expect(re.escape(fake.answer) + r"\s*\n> ")
    assert fake.last_body["model"] == "fake-large"
    assert fake.last_body["messages"] == [{"role": "system", "content": "Answer in one line."},
                                          {"role": "user", "content": "after clearing"}]

    # Ctrl-C while an answer streams stops that answer, not the session. The spinner names who
    # is asked first. The fake pauses after every piece for longer than Ctrl-C can take.
    fake.delay_per_chunk = 30.0
    requests = fake.chat_count
    terminal.type("a slow one\r")
    terminal.expect(r"Waiting for fake/fake-large…")
    wait_for(lambda: fake.chat_count > requests, terminal)
    terminal.type("\x03")
    terminal.expect(r"Interrupted\.\n> ")
    fake.delay_per_chunk = 0.0

    terminal.type("/help\r")
    terminal.expect(r"/exit +leave")
    terminal.type("/exit\r")
    assert terminal.wait() == 0

    with cli.log() as log:
        turns = list(reversed(log.latest(0)))
    assert [t.prompt for t in turns] == ["echo:**bold** reply", "and a second question", "after clearing",
                                         "a slow one"]
    assert turns[0].conversation_id == turns[1].conversation_id != turns[2].conversation_id
    assert turns[2].conversation_id == turns[3].conversation_id
    assert (turns[3].error or "").startswith("Interrupted") and all(t.error is None for t in turns[:3])


@pytest.mark.parametrize("session", [["-p", "fake"]], indirect=True)
def test_a_model_the_provider_does_not_serve_is_refused_at_once(session: tuple[Terminal, CLI],
                                                               fake: OpenAIFake) -> None:
    terminal, _ = session
    terminal.expect(r"Chatting with fake/fake-small\. Type /help")
    terminal.type("/model fake-nope\r")
    terminal.expect(r"Error: fake: model 'fake-nope' is not one of its models: fake-small, fake-large\n"
                    r"Model: fake/fake-small \(unchanged\)\.\n> ")
    terminal.type("/model fake-large\r")
    terminal.expect(r"Model: fake/fake-large\.\n> ")
    terminal.type("hello\r")
    terminal.expect(re.escape(fake.answer) + r"\s*\n> ")
    assert fake.last_body["model"] == "fake-large" and fake.chat_count == 1  # nothing was sent to check
    terminal.type("/exit\r")
    assert terminal.wait() == 0


def test_ctrl_d_leaves_the_session(session: tuple[Terminal, CLI]) -> None:
    terminal, _ = session
    terminal.expect(r"> ")
    terminal.type("\x04")
    assert terminal.wait() == 0
