"""The routes, by what a user does: the chat page and its JS-off sends (`chat`), the streaming
endpoints (`streaming`), the list of conversations (`conversations`), export and import
(`transfer`), attachments' bytes (`files`). Each route parses the request, calls the plain modules that hold the logic (ownership,
offers, sending, page, turns) through `wiring` (what a request needs from the app), and renders.
Request guards (origin, CSRF, limits, access) are in `webapp.guards` and `webapp.limits`, registered
once by `create_app`."""

from . import chat, conversations, files, search, share, signin, streaming, transfer

blueprints = (chat.bp, streaming.bp, conversations.bp, transfer.bp, files.bp, search.bp, share.bp, signin.bp)
