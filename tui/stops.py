"""Stop strings out of the output: a generation ends once its text holds one; what people read
(the app, batch lines, one-shot output) ends before it, unless they ask to keep it (--keep-stop)."""

from __future__ import annotations

from collections.abc import Sequence


def trim_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first stop string in it (all of it when there is none)."""
    cuts = [at for at in (text.find(s) for s in stops) if at >= 0]
    return text[:min(cuts)] if cuts else text


class StopFilter:
    """Streamed text with the stop string removed: ``feed`` returns what can be shown now, holding
    back the last characters that might still become the start of a stop string; ``end`` the rest."""

    def __init__(self, stops: Sequence[str], keep: bool = False):
        self.stops = () if keep else tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0  # characters of text already returned
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        trimmed = trim_stop(self.text, self.stops)
        if len(trimmed) < len(self.text):  # a stop string arrived: nothing after it is shown
            self.stopped = True
            return self._send(len(trimmed))
        return self._send(max(self.sent, len(self.text) - self.hold))

    def end(self) -> str:
        return self._send(len(trim_stop(self.text, self.stops)))

    def _send(self, upto: int) -> str:
        out, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return out
