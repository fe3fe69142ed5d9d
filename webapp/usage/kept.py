"""Values worked out once per history object. A conversation's items and meta entries are shared by
every copy of its history this process decodes (`Store.history`) and never changed in place (the
tests check it: `Store.check_decoded`), so what is computed from one (its estimated tokens, its
cost) holds as long as that object lives. Without this, every turn and page view of a long
conversation went through all of its items again: the context budget twice, the total once."""

import threading


class ByIdentity:
    """`value(obj, compute, *also)`: `compute(obj, *also)`, kept by `obj`'s identity and by the values
    `also` it depends on (a model's prices, which a catalogue refresh may change). The object is
    held with its value, so its id is never mistaken for a later object's. What it holds alive is
    bounded by size, not count (a message may be 100,000 characters, and with Redis another
    worker's write makes the next read decode a whole history afresh): `weight(obj, value)` says
    about how many characters an object holds; past `keep` characters in all, every object is let
    go and worked out again as it comes."""

    def __init__(self, keep, weight):
        self.keep, self.weight = keep, weight
        self._known = {}
        self._held = 0
        self._lock = threading.Lock()

    def value(self, obj, compute, *also):
        known = self._known.get(id(obj))
        if known is not None and known[0] is obj and known[1] == also:
            return known[2]
        value = compute(obj, *also)
        weight = self.weight(obj, value)
        with self._lock:
            if self._held + weight > self.keep:
                self._known.clear()
                self._held = 0
            self._known[id(obj)] = (obj, also, value)
            self._held += weight
        return value
