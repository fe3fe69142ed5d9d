# The chat app under gunicorn, as README.md runs it: `pip install -r requirements.txt`, then
# `gunicorn wsgi:app -c gunicorn.conf.py`.
#
#   docker build -t chat .
#   docker run -d --name chat -p 127.0.0.1:8000:8000 --env-file .env -v chat-data:/app/instance \
#       --stop-timeout 150 chat
#
# Settings come from the environment (`--env-file`, whose values are taken literally: no quotes);
# .env is not copied into the image. The conversation store lives in the /app/instance volume.
# `--stop-timeout 150`: docker's default 10 s would cut off replies still being written (gunicorn
# gives them GUNICORN_GRACEFUL_TIMEOUT, 120 s, to finish and be stored).
# WEB_CONCURRENCY defaults to the host's core count, not the container's CPU limit: set it to match.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    BIND=0.0.0.0:8000

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin chat

WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Code and dependencies stay root-owned and read-only to the app; only the store is writable. The
# bytecode is compiled here because the app cannot write __pycache__ at run time.
RUN python -m compileall -q /app \
    && mkdir -p /app/instance \
    && chown chat:chat /app/instance

USER chat
VOLUME /app/instance
EXPOSE 8000
STOPSIGNAL SIGTERM

# /healthz answers once a worker serves requests (it never calls OpenRouter). The probe uses BIND's
# port, and the first TRUSTED_HOSTS name as Host so the app's host check lets it through.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD python -c "\
import os, urllib.request as u; \
host = (os.environ.get('TRUSTED_HOSTS') or 'localhost').split(',')[0].strip().lstrip('.'); \
port = os.environ.get('BIND', '').rpartition(':')[2] or '8000'; \
u.urlopen(u.Request(f'http://127.0.0.1:{port}/healthz', headers={'Host': host}), timeout=4)"

CMD ["gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"]
