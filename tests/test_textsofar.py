"""A text grown by small pieces: the same text as concatenating them, read safely from other threads."""

import threading

from webapp import textsofar
from webapp.textsofar import TextSoFar


def test_it_is_the_pieces_joined_and_never_keeps_many_apart():
    text, pieces = TextSoFar("Start: "), []
    for i in range(3 * textsofar.PIECES + 7):
        pieces.append(f"{i} ")
        text.add(f"{i} ")
        assert len(text._pieces) <= textsofar.PIECES  # joined up as it goes: a few copies in all
    assert str(text) == "Start: " + "".join(pieces)
    assert str(TextSoFar()) == ""


def test_a_reader_in_another_thread_sees_every_piece_added_before_its_read_once():
    text, done, seen = TextSoFar(), threading.Event(), []

    def read():
        while not done.is_set():
            seen.append(str(text))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        expected = "".join(f"<{i}>" for i in range(20_000))
        for i in range(20_000):
            text.add(f"<{i}>")
    finally:
        done.set()
        reader.join()
    assert str(text) == expected
    assert seen and all(expected.startswith(read) for read in seen)  # a prefix: nothing lost, nothing twice
    assert [len(read) for read in seen] == sorted(len(read) for read in seen)  # never shrinks
