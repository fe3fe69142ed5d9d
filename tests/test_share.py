"""Sharing: the owner makes a read-only link /s/<token> (a confirmation first), anyone with it reads
the conversation as it was when shared (no form, no sidebar, noindex, the app's CSP), Stop sharing and
Delete make it a 404, only the owner can share or stop, and it expires with the conversation."""

import io
import re
import time


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def start(client, text, **extra):
    response = client.post("/c/new", data={"message": text, **extra}, content_type="multipart/form-data")
    return re.search(r"/c/([\w-]+)", response.headers["Location"]).group(1)


def share(client, cid):
    confirm = client.get(f"/c/{cid}/share")
    assert confirm.status_code == 200 and "Share" in confirm.get_data(as_text=True)
    response = client.post(f"/c/{cid}/share")
    assert response.status_code == 303
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    link = re.search(r'id="share-link" readonly value="http://localhost(/s/([\w-]+))"', html)
    assert link, "the page shows the link after sharing"
    return link.group(1), link.group(2)


def test_a_shared_link_shows_a_snapshot_without_the_app_around_it(make_app, fake):
    app = make_app()
    owner, stranger = app.test_client(), app.test_client()
    cid = start(owner, "What is the plan?")
    start(owner, "another private conversation")
    path, token = share(owner, cid)
    assert len(token) >= 22  # at least 128 random bits, URL-safe
    owner.post(f"/c/{cid}", data={"message": "a later turn"})
    response = stranger.get(path)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "What is the plan?" in html and "Reply 1: What is the plan?" in html
    assert "a later turn" not in html  # a snapshot
    assert "another private conversation" not in html
    assert 'name="message"' not in html and "<form" not in html  # no message form, no sidebar
    assert '<meta name="robots" content="noindex, nofollow">' in html
    assert response.headers["X-Robots-Tag"] == "noindex, nofollow"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_stop_sharing_and_delete_make_the_link_a_404(client, fake):
    cid = start(client, "share me")
    path, _ = share(client, cid)
    assert client.get(path).status_code == 200
    client.post(f"/c/{cid}/share/stop")
    assert client.get(path).status_code == 404
    path, _ = share(client, cid)
    client.post(f"/c/{cid}/delete")
    assert client.get(path).status_code == 404


def test_sharing_again_replaces_the_old_link(client, fake):
    cid = start(client, "twice")
    first, _ = share(client, cid)
    second, _ = share(client, cid)
    assert first != second and client.get(first).status_code == 404 and client.get(second).status_code == 200


def test_only_the_owner_can_share_or_stop(make_app, fake):
    app = make_app()
    owner, other = app.test_client(), app.test_client()
    cid = start(owner, "mine")
    assert other.get(f"/c/{cid}/share").status_code == 404
    assert other.post(f"/c/{cid}/share").status_code == 404
    path, _ = share(owner, cid)
    assert other.post(f"/c/{cid}/share/stop").status_code == 404
    assert other.get(path).status_code == 200  # reading is for anyone with the link


def test_unknown_and_malformed_tokens_are_404(client):
    assert client.get("/s/" + "A" * 32).status_code == 404
    assert client.get("/s/nope").status_code == 404


def test_a_shared_image_is_served_through_the_link_only(make_app, fake):
    import base64
    import hashlib
    png = base64.b64decode(PNG_B64)
    app = make_app()
    owner, stranger = app.test_client(), app.test_client()
    cid = start(owner, "look", files=(io.BytesIO(png), "dot.png"))
    path, token = share(owner, cid)
    html = stranger.get(path).get_data(as_text=True)
    sha = hashlib.sha256(png).hexdigest()
    assert f'src="/s/{token}/files/{sha}"' in html
    assert stranger.get(f"/s/{token}/files/{sha}").data == png
    assert stranger.get(f"/c/{cid}/files/{sha}").status_code == 404


def test_a_shared_snapshot_expires_with_its_conversation(tmp_path):
    from cachelib.file import FileSystemCache
    from webapp import conversation, sharing
    from webapp.purge import purge
    from webapp.store import FileBackend, Store

    store = Store(FileBackend(FileSystemCache(str(tmp_path), threshold=0), str(tmp_path / "locks")), ttl=100)
    with store.update("c1") as conv:
        conversation.add_turn(conv, "q", "msg_1", "completed", "a")
    token = sharing.share(store, "c1", "T")
    assert sharing.shared(store, token)["items"][0]["content"][0]["text"] == "q"
    purge(store, now=time.time() + 150)
    assert sharing.shared(store, token) is None


def test_the_share_page_has_a_copy_button_for_the_script(client, fake):
    cid = start(client, "copy me")
    share(client, cid)
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    assert re.search(r'<button type="button" class="secondary small" data-action="copy-link" hidden>Copy link</button>', html)
    assert "Stop sharing" in html
