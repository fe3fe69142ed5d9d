"""The kinds of event a turn publishes and a stream relays to the page: one vocabulary for the runner
(what the upstream said), the relay (whoever follows the turn), the SSE stream and static/app.js.
Plain names, no code."""

DELTA = "delta"  # more words of the reply (text)
REASONING = "reasoning"  # more words of the reasoning summary (text; never part of the reply)
ALIVE = "alive"  # the upstream is alive: a keep-alive comment or an event without words
QUEUED = "queued"  # the send waits for the reply before it: {"message", "waiter"}
STARTED = "started"  # the turn began: {"turn", "conversation", "url", "session"}
RESUMED = "resumed"  # a follower's stream begins: {"after": the id it goes on after, or None: from the
                     # first event (the page starts the reply over)}
HTML = "html"  # the server's sanitised rendering of the reply so far (the stream adds it)
DONE = "done"  # the reply ended (stored, stopped or cut): final
ERROR = "error"  # the turn failed: final
IDLE = "idle"  # the upstream stayed quiet as long as the turn's reader asked (never published)
CAUGHT_UP = "caught_up"  # all the upstream had sent is read; the next read would wait: what the
                         # reader's stream holds goes out now (never published)
TICK = "tick"  # a follower's wait ran out with nothing new (a rendering or a keep-alive may be due)

FINAL = (DONE, ERROR)
