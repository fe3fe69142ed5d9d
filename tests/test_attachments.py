"""Attachments on the JS-off path and in the plain module: images, PDFs and text files go upstream
as the Responses API takes them, every later turn sends them again, the page links the app's own URL
for them, only the owner may fetch them, and forged, oversized or unknown files are refused with the
text kept and nothing sent or stored."""

import base64
import hashlib
import io
import json
import re
import time

import pytest

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import TINY_MODEL, MODELS, error
from webapp import attachments

# A real 1×1 PNG, and the smallest real PDF head (its bytes are what is checked, not its name).
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [3 0 R] " \
      b"/Count 1 >> endobj\n3 0 obj << /Type /Page /Parent 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
TEXT = "def hello():\n    return 'héllo'\n".encode()


def upload(data, name):
    return (io.BytesIO(data), name)


def send(client, text, *files, cid="new", **fields):
    data = {"message": text, **fields}
    if files:
        data["files"] = [upload(d, n) for d, n in files]
    return client.post(f"/c/{cid}", data=data, content_type="multipart/form-data")


def cid_of(response):
    return re.search(r"/c/([\w-]+)", response.headers["Location"]).group(1)


def user_parts(fake, request=-1):
    return fake.requests[request]["body"]["input"][-1]["content"]


def test_an_image_a_pdf_and_a_text_file_go_upstream_as_the_api_takes_them(client, fake):
    response = send(client, "What are these?", (PNG, "dot.png"), (PDF, "report.pdf"), (TEXT, "hello.py"))
    assert response.status_code == 303
    parts = user_parts(fake)
    assert parts[0] == {"type": "input_text", "text": "What are these?"}
    assert parts[1] == {"type": "input_image", "detail": "auto",
                        "image_url": "data:image/png;base64," + base64.b64encode(PNG).decode()}
    assert parts[2] == {"type": "input_file", "filename": "report.pdf",
                        "file_data": "data:application/pdf;base64," + base64.b64encode(PDF).decode()}
    assert parts[3]["type"] == "input_text" and "hello.py" in parts[3]["text"]
    assert TEXT.decode() in parts[3]["text"]


def test_a_follow_up_turn_sends_the_earlier_attachments_again_exactly(client, fake):
    cid = cid_of(send(client, "Look", (PNG, "dot.png"), (PDF, "report.pdf")))
    send(client, "And now?", cid=cid)
    first, again = fake.requests[0]["body"]["input"][0], fake.requests[1]["body"]["input"][0]
    assert again == first
    assert fake.requests[1]["body"]["input"][-1]["content"] == [{"type": "input_text", "text": "And now?"}]


def test_the_page_shows_a_thumbnail_from_the_apps_own_url_and_a_download_link(client, fake):
    cid = cid_of(send(client, "Look", (PNG, "dot.png"), (TEXT, "hello.py")))
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    sha = hashlib.sha256(PNG).hexdigest()
    assert f'<img src="/c/{cid}/files/{sha}" alt="dot.png"' in html
    assert "data:image" not in html and base64.b64encode(PNG).decode() not in html
    link = re.search(r'<a href="(/c/[^"]+)" download="hello.py">hello.py</a>', html)
    assert link
    image = client.get(f"/c/{cid}/files/{sha}")
    assert image.status_code == 200 and image.data == PNG
    assert image.headers["Content-Type"] == "image/png"
    assert "private" in image.headers["Cache-Control"]
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    text = client.get(link.group(1))
    assert text.data == TEXT and text.headers["Content-Type"].startswith("text/plain")
    assert text.headers["Content-Disposition"].startswith("attachment")


def test_only_the_owner_may_fetch_an_attachment(make_app, fake):
    app = make_app()
    owner, other = app.test_client(), app.test_client()
    cid = cid_of(send(owner, "Look", (PNG, "dot.png")))
    url = f"/c/{cid}/files/{hashlib.sha256(PNG).hexdigest()}"
    assert owner.get(url).status_code == 200
    assert other.get(url).status_code == 404
    other_cid = cid_of(send(other, "mine"))
    # Not through another conversation either, nor a sha the conversation does not hold.
    assert other.get(f"/c/{other_cid}/files/{hashlib.sha256(PNG).hexdigest()}").status_code == 404
    assert owner.get(f"/c/{cid}/files/{'0' * 64}").status_code == 404
    assert owner.get(f"/c/{cid}/files/not-a-sha").status_code == 404


@pytest.mark.parametrize("data,name,why", [
    (b"not a png at all", "forged.png", "named as a PNG image but is not one"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
     "icon.svg", "SVG"),
    (b'<svg onload="alert(1)"></svg>', "looks-like.txt", "SVG"),
    (b"\x00\x01\x02binary", "blob.bin", "not a type that can be attached"),
])
def test_a_forged_or_unknown_file_is_refused_with_the_text_kept(client, fake, data, name, why):
    response = send(client, "keep me", (data, name))
    assert response.status_code == 415
    html = response.get_data(as_text=True)
    assert why in html and name in html and "PNG" in html  # says what is accepted
    assert textarea(html) == "keep me"
    assert fake.requests == []
    assert messages(client.get("/").get_data(as_text=True)) == []


def test_a_file_over_the_limit_is_refused_naming_the_limit_and_nothing_is_stored(make_app, fake, tmp_path):
    client = make_app(MAX_ATTACHMENT_BYTES=1000).test_client()
    response = send(client, "big one", (b"x" * 1001, "big.txt"))
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    assert "big.txt" in html and "too large" in html and "1000 bytes" in html
    assert textarea(html) == "big one" and fake.requests == []
    stored = [p for p in (tmp_path / "sessions").rglob("*") if p.is_file()]
    assert not any(b"x" * 1001 in p.read_bytes() for p in stored)


def test_files_up_to_the_default_limit_work_without_touching_max_content_length(client, fake):
    big = PNG + b"\x00" * (10 * 1024 * 1024 - len(PNG))  # a 10 MB "PNG": its bytes start as one
    response = send(client, "large", (big, "large.png"))
    assert response.status_code == 303
    assert user_parts(fake)[1]["image_url"].endswith(base64.b64encode(big).decode()[-40:])


def test_too_many_files_are_refused(make_app, fake):
    client = make_app(MAX_ATTACHMENTS=3).test_client()
    response = send(client, "many", *[(TEXT + bytes([65 + i]), f"f{i}.txt") for i in range(4)])
    assert response.status_code == 413
    assert "at most 3" in response.get_data(as_text=True) and fake.requests == []


def test_a_text_only_send_from_the_multipart_form_works_as_before(client, fake):
    response = client.post("/c/new", data={"message": "just text", "files": (io.BytesIO(b""), "")},
                           content_type="multipart/form-data")
    assert response.status_code == 303
    assert user_parts(fake) == [{"type": "input_text", "text": "just text"}]


def test_a_model_that_cannot_read_images_is_refused_before_anything_is_sent(client, fake):
    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}
    response = send(client, "what is this?", (PNG, "dot.png"), model="tiny/4k")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Tiny: 4K (tiny/4k) cannot read images" in html and textarea(html) == "what is this?"
    assert fake.requests == []


def test_switching_to_a_text_only_model_after_images_is_refused(client, fake):
    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}
    cid = cid_of(send(client, "look", (PNG, "dot.png")))
    response = send(client, "and now?", cid=cid, model="tiny/4k")
    assert response.status_code == 400 and "cannot read images" in response.get_data(as_text=True)
    assert len(fake.requests) == 1


def test_an_upstream_failure_keeps_the_files_for_the_retry(client, fake):
    fake.queue(error(500, "boom"))
    response = send(client, "try", (PNG, "dot.png"))
    cid = cid_of(response)
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    sha = hashlib.sha256(PNG).hexdigest()
    assert alert(html) and textarea(html) == "try"
    assert f'name="keep" value="{sha}" checked' in html
    send(client, "try", cid=cid, keep=sha, keep_listed="1")
    assert user_parts(fake)[1]["image_url"].startswith("data:image/png;base64,")
    assert messages(client.get(f"/c/{cid}").get_data(as_text=True))[0] == ("user", "try")


def test_the_budget_counts_an_image_as_an_estimate_not_its_bytes(client, fake):
    big = PNG + b"\x00" * (3 * 1024 * 1024)
    cid = cid_of(send(client, "look", (big, "big.png")))
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    used = int(re.search(r'id="budget"[^>]*value="(\d+)"', html).group(1))
    assert attachments.IMAGE_TOKENS <= used < attachments.IMAGE_TOKENS + 200


def test_export_json_holds_the_exact_items_and_import_restores_the_bytes(client, fake):
    cid = cid_of(send(client, "Look", (PNG, "dot.png"), (PDF, "report.pdf"), (TEXT, "hello.py")))
    sent = fake.requests[0]["body"]["input"][0]
    exported = client.get(f"/c/{cid}/export.json")
    data = json.loads(exported.data)
    assert data["items"][0] == sent
    markdown = client.get(f"/c/{cid}/export.md").get_data(as_text=True)
    assert "dot.png" in markdown and "report.pdf" in markdown and "hello.py" in markdown
    imported = client.post("/import", data={"file": (io.BytesIO(exported.data), "chat.json")},
                           content_type="multipart/form-data")
    assert imported.status_code == 303
    new_cid = cid_of(imported)
    assert new_cid != cid
    html = client.get(f"/c/{new_cid}").get_data(as_text=True)
    assert f"/c/{new_cid}/files/{hashlib.sha256(PNG).hexdigest()}" in html
    send(client, "again", cid=new_cid)
    assert fake.requests[-1]["body"]["input"][0] == sent


def test_deleting_a_conversation_deletes_its_files(client, fake):
    cid = cid_of(send(client, "Look", (PNG, "dot.png")))
    store = client.application.extensions["chat_store"]
    sha = hashlib.sha256(PNG).hexdigest()
    assert store.get_file(cid, sha) == PNG
    client.post(f"/c/{cid}/delete")
    assert store.get_file(cid, sha) is None


def test_a_page_view_never_reads_attachment_bytes(client, fake, monkeypatch):
    cid = cid_of(send(client, "Look", (PNG, "dot.png")))
    store = client.application.extensions["chat_store"]
    monkeypatch.setattr(type(store), "get_file", lambda *a: pytest.fail("a page view read a file"))
    assert client.get(f"/c/{cid}").status_code == 200


# --- the plain module --------------------------------------------------------------------------------

def test_identify_goes_by_the_bytes():
    assert attachments.identify("x.txt", PNG) == ("image/png", "image")
    assert attachments.identify("photo.png", b"\xff\xd8\xff\xe0rest") == ("image/jpeg", "image")
    assert attachments.identify("a", b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ("image/webp", "image")
    assert attachments.identify("doc", PDF) == ("application/pdf", "pdf")
    assert attachments.identify("notes.md", "# héllo".encode()) == ("text/plain; charset=utf-8", "text")
    for name, data in (("x.pdf", b"hello"), ("x.gif", b"hello"), ("x.svg", b"<svg/>"), ("x", b"\xff\xfe\x00")):
        with pytest.raises(attachments.Refused):
            attachments.identify(name, data)


def test_a_pdf_is_estimated_by_its_pages():
    three = PDF.replace(b"/Count 1", b"/Count 3") + b"<< /Type /Page >> << /Type /Page >>"
    assert attachments.tokens("pdf", three) == 3 * attachments.PDF_PAGE_TOKENS


def test_wire_parts_round_trip_through_import():
    refs = [attachments.Upload(n, d, *attachments.identify(n, d)).ref()
            for d, n in ((PNG, "dot.png"), (PDF, "report.pdf"), (TEXT, "hello.py"))]
    blobs = {hashlib.sha256(d).hexdigest(): d for d in (PNG, PDF, TEXT)}
    item = {"type": "message", "role": "user", "content": [attachments.part(r) for r in refs]}
    wire = attachments.wire([item], blobs.get)[0]["content"]
    back = [attachments.from_wire_part(p, 10_000) for p in wire]
    # An image's part has no name (the export lists it beside the items); a PDF's and a text file's do.
    assert [(u.name, u.data, u.kind) for u in back] == [("image", PNG, "image"), ("report.pdf", PDF, "pdf"),
                                                         ("hello.py", TEXT, "text")]
    with pytest.raises(attachments.Bad):
        attachments.from_wire_part({"type": "input_image", "image_url": "https://example.com/a.png"}, 10_000)
    with pytest.raises(attachments.Bad):
        attachments.from_wire_part({"type": "input_image",
                                    "image_url": "data:image/png;base64," + base64.b64encode(b"<svg/>").decode()},
                                   10_000)


# --- where the bytes live: files and Redis, their lifetime ----------------------------------------------

def _ref(data, name):
    return attachments.Upload(name, data, *attachments.identify(name, data)).ref()


def _stored_turn(store, cid, data, name):
    from webapp import conversation
    ref = _ref(data, name)
    store.put_file(cid, ref["sha"], data)
    with store.update(cid) as conv:
        conversation.add_turn(conv, "look", "msg_x", "completed", "reply", files=[ref])
    return ref


def test_attachments_outlive_their_conversation_and_purge_reclaims_them_after(tmp_path):
    from cachelib.file import FileSystemCache
    from webapp.purge import purge
    from webapp.store import FileBackend, Store

    backend = FileBackend(FileSystemCache(str(tmp_path), threshold=0), str(tmp_path / "locks"))
    store = Store(backend, ttl=100)
    ref = _stored_turn(store, "c1", PNG, "dot.png")
    assert store.get_file("c1", ref["sha"]) == PNG
    # Alive as long as the conversation (twice its lifetime, renewed with it) ...
    assert purge(store, now=time.time() + 150)["expired"] == 1  # the history went first
    assert store.get_file("c1", ref["sha"]) == PNG
    # ... and reclaimed by purge once past it.
    assert purge(store, now=time.time() + 250)["expired"] >= 1
    assert not any(p.is_file() and PNG in p.read_bytes() for p in tmp_path.rglob("*"))


def test_attachments_live_in_redis_with_a_ttl_and_go_with_delete(redis_url):
    import redis as redis_py
    from webapp.store import RedisBackend, Store

    client = redis_py.Redis.from_url(redis_url)
    store = Store(RedisBackend(client), ttl=100)
    ref = _stored_turn(store, "r1", PDF, "report.pdf")
    key = f"file:r1:{ref['sha']}"
    assert client.get(key) == PDF and 100 < client.ttl(key) <= 200
    assert attachments.stored(store, "r1", ref["sha"]) == (ref, PDF)
    store.delete("r1")
    assert client.exists(key) == 0

