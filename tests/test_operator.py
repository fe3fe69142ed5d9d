"""What an operator sees from a real `gunicorn wsgi:app -c gunicorn.conf.py`: the startup line, one clear
line for a bad setting, and no control socket shared with other gunicorn instances."""

import os
import re
import subprocess
import sys
import time

import pytest

from tests.serving import ROOT, Gunicorn, free_port


@pytest.fixture
def app_env(fake, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return {"OPENROUTER_API_KEY": fake.api_key, "OPENROUTER_BASE_URL": fake.base_url,
            "OPENROUTER_MODEL": "test/operator-model", "SECRET_KEY": "operator-test",
            "SESSION_DIR": str(tmp_path / "sessions"), "HOME": str(home)}


def startup_lines(server, expected, timeout=10):
    """The "Chat ready" lines, once `expected` workers have logged theirs (the first may answer alone)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.output().splitlines() if "Chat ready:" in line]
        if len(lines) >= expected or time.monotonic() > deadline:
            time.sleep(0.3)  # a worker logging twice would show up here
            return [line for line in server.output().splitlines() if "Chat ready:" in line]
        time.sleep(0.05)


def test_each_worker_logs_one_startup_line_without_the_key(app_env, tmp_path, fake):
    with Gunicorn(app_env, tmp_path / "gunicorn.log", workers=2, threads=8, worker_class="gthread") as server:
        lines = startup_lines(server, 2)
        output = server.output()
    assert len(lines) == 2, output
    pids = {re.search(r"\[(\d+)\] \[INFO\] Chat ready:", line)[1] for line in lines}
    assert len(pids) == 2, lines  # one per worker process, not one worker twice
    for line in lines:
        assert line.endswith(f"Chat ready: model test/operator-model, upstream {fake.base_url}, "
                             f"store {tmp_path / 'sessions'} (files), signing key from SECRET_KEY, "
                             f"2 workers × 8 threads"), line
    assert fake.api_key not in output
    assert "Traceback" not in output


def test_the_startup_line_names_redis_without_its_password(app_env, tmp_path, fake):
    # Nothing connects to Redis at startup, so no server is needed to see the line.
    app_env.update(SESSION_TYPE="redis", REDIS_URL="redis://user:s3cret@127.0.0.1:6399/2")
    with Gunicorn(app_env, tmp_path / "redis.log", workers=1, threads=4, worker_class="gthread") as server:
        lines = startup_lines(server, 1)
        output = server.output()
    assert len(lines) == 1, output
    assert lines[0].endswith(f"Chat ready: model test/operator-model, upstream {fake.base_url}, "
                             "store 127.0.0.1:6399/2 (redis), signing key from SECRET_KEY, 1 worker × 4 threads"), lines
    assert "s3cret" not in output and "user:" not in output and fake.api_key not in output


def test_no_control_socket_is_shared_between_instances(app_env, tmp_path):
    """gunicorn 27 would otherwise create $HOME/.gunicorn/gunicorn.ctl (or one in $XDG_RUNTIME_DIR)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    app_env["XDG_RUNTIME_DIR"] = str(runtime)
    with Gunicorn(app_env, tmp_path / "ctl.log", workers=1) as server:
        startup_lines(server, 1)
        created = sorted(str(p) for p in [*(tmp_path / "home").rglob("*"), *runtime.rglob("*")])
        output = server.output()
    assert created == []
    assert "Control socket" not in output


def run_gunicorn(tmp_path, **settings):
    """Run gunicorn as an operator would, expecting it to stop by itself; return (status, output)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "BIND": f"127.0.0.1:{free_port()}",
           "WEB_CONCURRENCY": "1", "SESSION_DIR": str(tmp_path / "sessions"), **settings}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"gunicorn was still running after 10 s: {output.decode(errors='replace')}")
    assert time.monotonic() - started < 10
    return proc.returncode, output.decode(errors="replace")


@pytest.mark.parametrize("name, value, message", [
    ("GUNICORN_THREADS", "lots", "GUNICORN_THREADS must be a whole number, got 'lots'"),
    ("OPENROUTER_BASE_URL", "not-a-url", "OPENROUTER_BASE_URL must be an http(s)://host URL such as "
                                         "https://openrouter.ai/api/v1, got 'not-a-url'"),
    ("GUNICORN_GRACEFUL_TIMEOUT", "soon", "GUNICORN_GRACEFUL_TIMEOUT must be a whole number, got 'soon'"),
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1, got 0"),
    ("BIND", "localhost", "BIND must be host:port, [ipv6]:port or unix:/path, got 'localhost'"),
    ("BIND", "127.0.0.1:70000", "BIND's port must be 1 to 65535, got '127.0.0.1:70000'"),
])
def test_a_bad_setting_stops_gunicorn_with_one_line(tmp_path, name, value, message):
    status, output = run_gunicorn(tmp_path, **{name: value})
    assert status != 0, output
    errors = [line for line in output.splitlines() if "Configuration error:" in line]
    assert errors == [f"Configuration error: {message}"], output
    assert "Traceback" not in output
