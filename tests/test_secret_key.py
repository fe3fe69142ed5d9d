"""The signing key without SECRET_KEY: made once, kept on disk (0600), the same for every worker."""

import multiprocessing
import os
import stat

import pytest

from tests.conftest import app_config
from webapp import create_app
from webapp.secret_key import load_or_create
from webapp.settings import SettingsError, describe


def _race(path, start, results):
    start.wait()
    results.put(load_or_create(path))


def test_workers_starting_together_agree_on_one_key(tmp_path):
    path = str(tmp_path / "instance" / "secret_key")
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, start, results)) for _ in range(8)]
    for proc in procs:
        proc.start()
    start.set()
    found = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert len({key for key, _ in found}) == 1
    assert sum(created for _, created in found) == 1  # one made it; the others read it
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / "instance") == ["secret_key"]  # no drafts left behind
    assert load_or_create(path) == (found[0][0], False)


def test_an_app_without_secret_key_keeps_its_key_beside_the_store(fake, tmp_path):
    config = app_config(fake, tmp_path, SECRET_KEY="")
    first = create_app(config, env={})
    again = create_app(config, env={})  # another worker, or the app after a restart
    key_file = tmp_path / "secret_key"  # SESSION_DIR is tmp_path/sessions
    assert first.config["SECRET_KEY"] == again.config["SECRET_KEY"] == key_file.read_text().strip()
    assert len(first.config["SECRET_KEY"]) >= 64
    assert first.config["SECRET_KEY_SOURCE"] == f"{key_file} (made now)"
    assert again.config["SECRET_KEY_SOURCE"] == str(key_file)
    line = describe(again.config, 2, 8, again.instance_path)
    assert f"signing key from {key_file}, 2 workers" in line and first.config["SECRET_KEY"] not in line


def test_secret_key_in_the_environment_is_used_and_nothing_is_written(fake, tmp_path):
    app = create_app(app_config(fake, tmp_path, SECRET_KEY="from-the-environment"), env={})
    assert app.config["SECRET_KEY"] == "from-the-environment"
    assert not (tmp_path / "secret_key").exists()


def test_an_unusable_key_file_stops_startup_with_a_sentence(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(SettingsError, match="is empty"):
        load_or_create(str(empty))
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    with pytest.raises(SettingsError, match="file-not-folder/secret_key .*set SECRET_KEY"):
        load_or_create(str(blocked / "secret_key"))
