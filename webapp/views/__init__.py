"""The routes, by what a user does: the chat page and its JS-off sends (`chat`), the streaming
endpoints (`streaming`), the list of conversations (`conversations`), export and import
(`transfer`). Shared helpers live in `common`; request guards (origin, CSRF, limits, access) in
`webapp.guards` and `webapp.limits`, registered once by `create_app`."""

from . import chat, conversations, streaming, transfer

blueprints = (chat.bp, streaming.bp, conversations.bp, transfer.bp)
