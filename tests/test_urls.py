"""The URLs templates build are built once per process (webapp/urls.py): the same URLs Flask builds,
for whichever mount point the request came through."""

import re

from webapp import urls


def links(html):
    return re.findall(r'(?<![\w-])(?:href|src|action|formaction)="([^"#?]+)', html)


def test_kept_urls_are_the_ones_flask_builds_whatever_the_values(app):
    url_for = urls.kept_url_for(app)
    cases = [("chat.index", {}), ("static", {"filename": "app.css"}), ("chat.send", {"cid": "new"}),
             ("conversations.rename", {"cid": "a b/c"}),
             ("chat.conversation_page", {"cid": "x", "_anchor": "m"}),
             ("chat.conversation_page", {"cid": "x", "edit": "2"}),
             ("share.view", {"token": "t", "_external": True})]
    with app.test_request_context("/"):
        for _ in range(2):  # built, then kept
            for endpoint, values in cases:
                assert url_for(endpoint, **values) == app.url_for(endpoint, **values)
        assert "?v=" in url_for("static", filename="app.css")  # the file's version, as Flask adds it


def test_pages_link_under_the_mount_point_they_were_asked_through(client):
    """One process may be reached at / and under a prefix (SCRIPT_NAME, set by a proxy or gunicorn):
    a URL kept from one must never be served to the other."""
    plain = links(client.get("/").get_data(as_text=True))
    mounted = links(client.get("/", environ_overrides={"SCRIPT_NAME": "/chat"}).get_data(as_text=True))
    plain_again = links(client.get("/").get_data(as_text=True))
    assert plain and len(plain) == len(mounted)
    assert all(url.startswith("/chat/") for url in mounted), mounted
    assert not any(url.startswith("/chat/") for url in plain_again)
    assert plain_again == plain
