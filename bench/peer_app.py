"""The peer for bench/peer.py: Gradio's `gr.ChatInterface` on the same fake OpenRouter (Responses API).

Runs in its own venv (build/peer-venv: `pip install -r bench/peer-requirements.txt`), not the app's:

    build/peer-venv/bin/python bench/peer_app.py BASE_URL API_KEY PORT [CONCURRENCY]

CONCURRENCY is the ChatInterface's `concurrency_limit` (Gradio's default is 1: one reply at a time
per app; `none` lifts it). Each turn streams from `{BASE_URL}/responses` like the chat app's JS path,
sending the whole history as Responses API items. Gradio's history keeps only role and content, so the
id and status the API gave each reply (which it must get back) are kept here, by reply text.
"""

import json
import sys

import gradio as gr
import requests

BASE, KEY, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
LIMIT = sys.argv[4] if len(sys.argv) > 4 else "1"
http = requests.Session()
http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=512))
replies = {}  # reply text -> {"id", "status"}


def text_of(content):
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    return "".join(text_of(part) for part in content or [])


def items_for(message, history):
    items = []
    for turn in history:
        text = text_of(turn["content"])
        if turn["role"] == "user":
            items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
        elif text in replies:
            items.append({"type": "message", "role": "assistant", **replies[text],
                          "content": [{"type": "output_text", "text": text, "annotations": []}]})
    items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": message}]})
    return items


def chat(message, history):
    body = {"model": "openai/o4-mini", "input": items_for(message, history), "max_output_tokens": 9000,
            "stream": True, "store": False}
    response = http.post(BASE + "/responses", json=body, stream=True, timeout=300,
                         headers={"Authorization": f"Bearer {KEY}"})
    response.raise_for_status()
    text, item = "", {}
    for line in response.iter_lines(decode_unicode=True):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event["type"] == "response.output_text.delta":
            text += event["delta"]
            yield text
        elif event["type"] == "response.output_item.done" and event["item"].get("type") == "message":
            item = event["item"]
    replies[text] = {"id": item.get("id"), "status": item.get("status", "completed")}
    yield text


demo = gr.ChatInterface(chat, title="Chat", concurrency_limit=None if LIMIT == "none" else int(LIMIT))

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=None if LIMIT == "none" else int(LIMIT))
    demo.launch(server_name="127.0.0.1", server_port=PORT, show_error=True, quiet=True)
