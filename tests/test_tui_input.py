"""Getting text into the prompt box (issue 36): keys typed while the app starts, \"\"\" blocks as
`ollama run` has them, and a pasted text that arrives whole."""

from __future__ import annotations

import os
import termios

import pytest
from conftest import SIZE, done, make_app, run_async, until
from textual import events
from textual.screen import Screen

from model.generate.backend import Settings
from tui.typeahead import typeahead
from tui.widgets import PromptArea


@pytest.fixture
def terminal():
    """A pseudo-terminal: (the keyboard's end, the app's end), in cooked mode as a shell leaves it."""
    keyboard, tty = os.openpty()
    yield keyboard, tty
    os.close(keyboard)
    os.close(tty)


def test_keys_typed_while_the_model_loads_are_kept_unechoed_and_the_terminal_comes_back(terminal):
    keyboard, tty = terminal
    before = termios.tcgetattr(tty)
    assert before[3] & termios.ECHO and before[3] & termios.ICANON
    os.write(keyboard, b"he")  # typed before the app's code ran: an unfinished cooked line
    with typeahead(tty):
        held = termios.tcgetattr(tty)
        assert not held[3] & (termios.ECHO | termios.ICANON) and held[3] & termios.ISIG  # ^C still works
        os.write(keyboard, b"llo\r")
        # what Textual's input thread will read: every key, Enter as \r (Enter, not Ctrl+J's \n)
        assert read_until(tty, b"\r") == b"hello\r"
    assert termios.tcgetattr(tty) == before


def read_until(fd: int, end: bytes) -> bytes:
    got = b""
    while not got.endswith(end):
        got += os.read(fd, 100)
    return got


def test_the_terminal_comes_back_when_loading_is_interrupted(terminal):
    keyboard, tty = terminal
    before = termios.tcgetattr(tty)
    with pytest.raises(KeyboardInterrupt), typeahead(tty):
        raise KeyboardInterrupt
    assert termios.tcgetattr(tty) == before


def test_typeahead_leaves_a_pipe_alone():
    read, write = os.pipe()
    with typeahead(read):  # not a terminal: nothing to hold
        pass
    os.close(read)
    os.close(write)


@run_async
async def test_the_screen_focuses_the_prompt_box_by_itself():
    # keys read from the terminal as the app starts can be handled before on_mount's focus() takes
    # effect (it is deferred): they go to what the screen focused by itself as it was composed or
    # resumed, which must be the prompt box (the transcript, the first focusable widget, drops them)
    app = make_app(settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        app.screen.set_focus(None)
        await app.push_screen(Screen())
        await app.pop_screen()  # the screen resumes with nothing focused: it chooses
        await pilot.pause()
        assert isinstance(app.focused, PromptArea)
        await pilot.press(*"hello")
        assert app.query_one(PromptArea).text == "hello"


@run_async
async def test_a_triple_quote_block_reads_lines_until_one_ends_with_the_quotes():
    app = make_app(settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        async def line(text: str) -> None:  # typed at the cursor (key by key is slow), then Enter
            prompt(app).insert(text)
            await pilot.press("enter")

        await line('"""ROMEO')
        await line("O Juliet")
        assert prompt(app).text == '"""ROMEO\nO Juliet\n' and app.current is None  # nothing sent yet
        await line('"""')
        await until(pilot, done(app))
        assert app.backend.prompts == ["ROMEO\nO Juliet"]  # the text between the quotes
        # the marks on lines of their own: the newlines just inside them are not part of the prompt
        for text in ('"""', "JULIET:", '"""'):
            await line(text)
        await until(pilot, lambda: len(app.backend.prompts) == 2 and done(app)())
        await line('"""one line"""')
        await until(pilot, lambda: len(app.backend.prompts) == 3 and done(app)())
        assert app.backend.prompts[1:] == ["JULIET:", "one line"]
        assert prompt(app).text == ""


@run_async
async def test_a_pasted_text_arrives_whole_and_enter_sends_it():
    app = make_app(settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"Q: ")
        pasted = "first line\nsecond line\n\nlast line"
        app.post_message(events.Paste(pasted))  # a bracketed paste, as Textual's driver posts it
        await pilot.pause()
        assert prompt(app).text == "Q: " + pasted and app.current is None
        await pilot.press("enter")
        await until(pilot, done(app))
        assert app.backend.prompts == ["Q: " + pasted]


def prompt(app) -> PromptArea:
    return app.query_one(PromptArea)
