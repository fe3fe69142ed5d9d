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


def test_a_static_file_changed_while_the_app_runs_is_linked_with_its_new_version(app, client, tmp_path):
    """Serving a static file reads its version afresh (factory.versioned_static); pages built after
    that link the new version, not the one kept from before (a browser keeps each for a year)."""
    import hashlib
    import shutil

    shutil.copytree(app.static_folder, tmp_path / "static")
    app.static_folder = str(tmp_path / "static")

    def linked():
        return re.search(r'app\.css\?v=(\w+)', client.get("/").get_data(as_text=True)).group(1)

    before = linked()
    (tmp_path / "static" / "app.css").write_text("body { color: black }\n")
    assert client.get(f"/static/app.css?v={before}").status_code == 200
    after = linked()
    assert after != before
    assert after == hashlib.sha256(b"body { color: black }\n").hexdigest()[:12]


def test_urls_that_name_a_scheme_or_carry_other_values_than_text_are_built_each_time(app):
    url_for = urls.kept_url_for(app)
    with app.test_request_context("/", base_url="http://localhost"):
        assert url_for("chat.index", _scheme="https") == "https://localhost/"
        assert url_for("chat.conversation_page", cid="x", edit=1) == "/c/x?edit=1"
    with app.test_request_context("/", base_url="http://127.0.0.1"):
        assert url_for("chat.index", _scheme="https") == "https://127.0.0.1/"
        assert url_for("chat.conversation_page", cid="x", edit=True) == app.url_for(
            "chat.conversation_page", cid="x", edit=True)
