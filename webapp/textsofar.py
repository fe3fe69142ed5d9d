"""A text that grows by small pieces (a streaming reply, delta by delta) and is read now and then.

`self.text += delta` copies the whole text at every delta (CPython grows a string in place only when
nothing else refers to it, and an attribute always does): a reply of 9,000 deltas copies about 160 MB,
in each place that keeps it. Kept as pieces instead, joined when read, and joined up by the writer
every PIECES pieces so they never pile up: a few copies of the text in all.

One writer, any number of readers in other threads: under the GIL a join sees the list whole, and
the writer replaces the list when it joins it up, never empties it, so a reader sees every piece
added before its read, once.
"""

PIECES = 256  # pieces kept apart at most before the writer joins them into one


class TextSoFar:
    __slots__ = ("_pieces",)

    def __init__(self, text=""):
        self._pieces = [text] if text else []

    def add(self, piece):
        pieces = self._pieces
        pieces.append(piece)
        if len(pieces) > PIECES:
            self._pieces = ["".join(pieces)]

    def __str__(self):
        pieces = self._pieces
        return pieces[0] if len(pieces) == 1 else "".join(pieces)
