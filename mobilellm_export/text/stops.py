"""Stop strings in streamed text: what may be shown after each piece, as the apps' cores do.

A runtime that prints its pieces (ExecuTorch's C++ runner) prints the stop token's text too, and a
stop string can arrive split over pieces. So nothing is shown that could still be the start of a
stop string, and nothing from the first stop string on. The shared vectors
(tests/fixtures/apps/stream.json) hold the Kotlin core, the Swift mirror and this to one answer.
"""

from __future__ import annotations


class StopStream:
    def __init__(self, stops: list[str], write=lambda s: None):
        self.stops = [s for s in stops if s]
        self.write = write
        self.joined = ""
        self.shown = 0  # characters of `joined` already written
        self.stop_string: str | None = None
        self.stop_piece: int | None = None
        self._pieces = 0

    @property
    def stopped(self) -> bool:
        return self.stop_string is not None

    @property
    def visible(self) -> str:
        return self.joined[:self.shown]

    def _safe(self) -> int:
        """How much of `joined` may be on screen."""
        hits = [(self.joined.find(s), s) for s in self.stops if s in self.joined]
        if hits:
            at, s = min(hits)
            self.stop_string = s
            return at
        for p in range(max(self.shown, len(self.joined) - max(map(len, self.stops), default=0)), len(self.joined)):
            if any(s.startswith(self.joined[p:]) for s in self.stops):
                return p
        return len(self.joined)

    def feed(self, piece: str) -> None:
        if self.stopped:
            return  # what follows a stop string is never shown
        self.joined += piece
        upto = self._safe()
        if self.stopped:
            self.stop_piece = self._pieces
        self._pieces += 1
        if upto > self.shown:
            self.write(self.joined[self.shown:upto])
            self.shown = upto

    def finish(self) -> None:
        """The stream ended without a stop string: a held-back tail that began like one is text."""
        if not self.stopped and self.shown < len(self.joined):
            self.write(self.joined[self.shown:])
            self.shown = len(self.joined)
