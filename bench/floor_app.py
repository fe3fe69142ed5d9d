"""The fixed shape at its smallest, for bench/run.py's "floor" column: what the product's shape costs
before any of the app's own work.

    gunicorn bench.floor_app:app -c gunicorn.conf.py      (same settings, workers and worker class)

Flask, a server-side session (Flask-Session on cachelib's file store, the app's default) holding the
message list, and `requests` posting the full history to `{OPENROUTER_BASE_URL}/responses`: a form post
appends the message, sends the history, appends the reply (its id and status kept), and answers 303;
the GET renders every message through a Jinja template. `POST /turns` relays the streamed reply as SSE.

Deliberately left out, because the floor is the shape and not a product: CSRF and same-origin checks,
rate limits, conversations, locks, crash-safe saves, retries, markdown, the model picker, error pages.
Its page carries `csrf_token` and `regenerate` fields only so bench/load.py and bench/run.py drive it
exactly as they drive the app (neither is checked). Never serve it.
"""

import json
import os

import requests
from cachelib import FileSystemCache
from flask import Flask, Response, redirect, request, session, stream_with_context
from flask_session import Session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.environ["OPENROUTER_BASE_URL"].rstrip("/")
KEY = os.environ["OPENROUTER_API_KEY"]
MODEL = os.environ.get("OPENROUTER_MODEL", "openai/o4-mini")

app = Flask(__name__, static_folder=os.path.join(ROOT, "static"))
# Like the app: the session is written when it changed, not again on every page view.
app.config.update(SECRET_KEY="floor", SESSION_TYPE="cachelib", SESSION_REFRESH_EACH_REQUEST=False,
                  SESSION_CACHELIB=FileSystemCache(os.path.join(os.environ["SESSION_DIR"], "floor"),
                                                   threshold=0))
Session(app)
http = requests.Session()
http.trust_env = False
http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=1000))

PAGE = """<!doctype html><html lang="en"><title>Chat</title><main>
{% for item in items %}<div data-role="{{ item.role }}">{{ item.content[0].text }}</div>
{% if item.role == "assistant" and loop.last %}<input name="regenerate" value="{{ item.id }}" type="hidden">{% endif %}
{% endfor %}<form method="post"><input type="hidden" name="csrf_token" value="floor">
<textarea name="message"></textarea><button>Send</button></form></main>"""
PAGE_TEMPLATE = app.jinja_env.from_string(PAGE)  # compiled once, as render_template's loader would


def upstream(items, stream=False):
    body = {"model": MODEL, "input": items, "max_output_tokens": 9000, "stream": stream}
    return http.post(f"{BASE}/responses", data=json.dumps(body), stream=stream, timeout=300,
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})


def with_message(form):
    items = list(session.get("items", []))
    if form.get("regenerate") and items and items[-1]["role"] == "assistant":
        items.pop()
    else:
        items.append({"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": form["message"]}]})
    return items


def reply_item(message):
    return {"type": "message", "role": "assistant", "id": message["id"], "status": message["status"],
            "content": [{"type": "output_text", "text": message["content"][0]["text"], "annotations": []}]}


@app.get("/")
@app.get("/c/<cid>")
def page(cid=None):
    return PAGE_TEMPLATE.render(items=session.get("items", []))


@app.post("/")
@app.post("/c/<cid>")
def send(cid=None):
    items = with_message(request.form)
    reply = upstream(items).json()
    message = next(o for o in reply["output"] if o["type"] == "message")
    session["items"] = items + [reply_item(message)]
    return redirect("/c/floor", 303)


@app.post("/turns")
def turns():
    items = with_message(request.form)
    session["items"] = items  # stored now, so a new browser gets its cookie with this response
    saved = session._get_current_object()

    def events():
        with upstream(items, stream=True) as response:
            for line in response.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event["type"] == "response.output_text.delta":
                    yield f"event: delta\ndata: {json.dumps(event['delta'])}\n\n"
                elif event["type"] == "response.completed":
                    message = next(o for o in event["response"]["output"] if o["type"] == "message")
                    saved["items"] = items + [reply_item(message)]
                    # Flask-Session saved the session when the view returned, before the stream:
                    # save it again now that it holds the reply (its cookie went with the headers).
                    app.session_interface.save_session(app, saved, Response())
                    yield "event: done\ndata: {}\n\n"

    return Response(stream_with_context(events()), mimetype="text/event-stream")
