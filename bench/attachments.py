"""`python -m bench.attachments`: does a conversation holding megabytes of attachments open as fast as
one without? Two conversations of the same turns under the production gunicorn (each worker class),
one whose first message carries four 1.5 MB images and a PDF; GETs of the two alternated. Reports
each median, their ratio (the target: within 2x) and each page's HTML size. Ratios, not times: these
machines are noisy."""

import base64
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import API_KEY, CLASSES, apps, median, nojs, timed_get  # noqa: E402
from tests.fake_openrouter import FakeOpenRouter  # noqa: E402
from tests.serving import Browser  # noqa: E402

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PDF = b"%PDF-1.4\n" + b"3 0 obj << /Type /Page >> endobj\n" * 3 + b"%%EOF\n"


def conversation(server, files, turns=10):
    browser = Browser()
    started = browser.get(server.url + "/")  # a page first: the CSRF token for the multipart post
    token = started.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = browser.post(server.url + "/c/new", data={"message": "look at these", "csrf_token": token},
                            files=[("files", f) for f in files], allow_redirects=False, timeout=120)
    assert response.status_code == 303, response.text[:300]
    path = response.headers["Location"].split("#")[0]
    for i in range(turns - 1):
        nojs(browser, server.url, path, {"message": f"follow-up {i}"})
    return browser, path


def main(samples=40):
    workdir = tempfile.mkdtemp(prefix="chat-bench-attach-")
    big = [(f"photo{i}.png", PNG + os.urandom(1536 * 1024), "image/png") for i in range(4)]
    try:
        with FakeOpenRouter(api_key=API_KEY).start() as fake:
            with apps(fake.base_url, workdir, "attach", floor=False) as servers:
                print("| worker class | without files (ms) | with 6 MB of files (ms) | ratio | HTML without / with |")
                print("|---|---|---|---|---|")
                for cls in CLASSES:
                    server = servers[cls]
                    plain = conversation(server, [])
                    heavy = conversation(server, big + [("report.pdf", PDF, "application/pdf")])
                    times = {"plain": [], "heavy": []}
                    for i in range(samples):
                        order = (("plain", plain), ("heavy", heavy))
                        for name, (browser, path) in (order if i % 2 == 0 else order[::-1]):
                            times[name].append(timed_get(browser, server.url + path))
                    sizes = [len(b.get(server.url + p).content) for b, p in (plain, heavy)]
                    a, b = median(times["plain"]) * 1000, median(times["heavy"]) * 1000
                    print(f"| {cls} | {a:.1f} | {b:.1f} | {b / a:.2f} | {sizes[0]:,} / {sizes[1]:,} bytes |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
