"""Values worked out once per history object. A conversation's items and meta entries are shared by
every copy of its history this process decodes (`Store.history`) and never changed in place (the
tests check it: `Store.check_decoded`), so what is computed from one (its estimated tokens, its
cost) holds as long as that object lives. Without this, every turn and page view of a long
conversation went through all of its items again: the context budget twice, the total once."""

import threading


class ByIdentity:
    """`value(obj, compute, *also)`: `compute(obj, *also)`, kept by `obj`'s identity and by the values
    `also` it depends on (a model's prices, which a catalogue refresh may change). The object
    is held with its value, so its id is never mistaken for a later object's; at most `keep` are
    held, then all are dropped and worked out again as they come."""

    def __init__(self, keep):
        self.keep = keep
        self._known = {}
        self._lock = threading.Lock()

    def value(self, obj, compute, *also):
        known = self._known.get(id(obj))
        if known is not None and known[0] is obj and known[1] == also:
            return known[2]
        value = compute(obj, *also)
        with self._lock:
            if len(self._known) >= self.keep:
                self._known.clear()
            self._known[id(obj)] = (obj, also, value)
        return value
