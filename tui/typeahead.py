"""Keys typed while the app starts: kept for the prompt box, never echoed over the screen.

Until Textual takes the terminal (once the model has loaded, seconds after start) the terminal is
in its cooked mode: it echoes each key where the cursor is, among our progress lines and left on
the shell's screen after the app ends, and holds the keys as an unfinished line. ``typeahead()``
puts the terminal in cbreak mode without echo for that time (Ctrl+C still interrupts): the keys
wait unread in its buffer, byte for byte (Enter stays ``\\r``, so it is Enter to Textual and not a
Ctrl+J), and Textual's input thread reads them as keys when it starts; the prompt box holds the
focus from the first frame (GPTApp.AUTO_FOCUS), so they land there. Textual restores the settings
it found when it stops, ours; ``typeahead()`` then restores the terminal's own.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def typeahead(fd: int | None = None) -> Iterator[None]:
    """No echo and no line editing on the terminal ``fd`` (default: stdin) inside the block; the
    settings it had come back on leaving it, however it is left. Not a terminal: nothing to do."""
    try:
        import termios
    except ImportError:  # Windows: its console keeps typed keys for the app already
        yield
        return
    try:
        fd = sys.stdin.fileno() if fd is None else fd
        before = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):  # a pipe, a file, a closed stdin
        yield
        return
    held = termios.tcgetattr(fd)
    held[0] &= ~termios.ICRNL  # iflag: Enter reaches Textual as \r (Enter), not \n (Ctrl+J)
    held[3] &= ~(termios.ECHO | termios.ICANON)  # lflag: no echo, keys readable one at a time
    held[6][termios.VMIN], held[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, held)  # TCSANOW: what was typed so far stays
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSANOW, before)
