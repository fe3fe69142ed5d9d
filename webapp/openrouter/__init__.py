"""The OpenRouter Responses API: the only code that speaks HTTP upstream.

    errors.py      every failure as one UpstreamError a user can read, scrubbed of every API key
    connection.py  connections whose socket a turn can cut in any phase (Stop)
    parsing.py     reading a response object, Server-Sent Events and reasoning summaries (no HTTP)
    client.py      the Client: the request body, a whole or a streamed reply, the model list

It never logs the API key, and `UpstreamError` scrubs every registered key from the upstream's words
and cuts them short, so no path can pass on a key or a page-long message.
"""

from .client import MODELS_READ_TIMEOUT, REASONING_EFFORTS, Client
from .connection import StreamState
from .errors import (MESSAGES, UpstreamError, clean_detail, error_for_status, parse_retry_after,
                     register_secret, scrub)
from .parsing import Reply, reasoning_from_output, reply_from_response, sse_data

__all__ = ["MODELS_READ_TIMEOUT", "REASONING_EFFORTS", "Client", "StreamState", "MESSAGES", "UpstreamError",
           "clean_detail", "error_for_status", "parse_retry_after", "register_secret", "scrub", "Reply",
           "reasoning_from_output", "reply_from_response", "sse_data"]
