"""The suite's own rules (tests/conftest.py): a test starts outside the checkout, and the session fails when the
checkout gained a file or folder, whatever wrote it, but what tools write by themselves."""

import os
import subprocess
import sys

from conftest import CHECKOUT, checkout_paths


def test_a_test_starts_outside_the_checkout():
    assert not os.path.realpath(os.getcwd()).startswith(str(CHECKOUT) + os.sep)
    assert os.path.realpath(os.getcwd()) != str(CHECKOUT)


def test_the_check_sees_every_new_file_and_folder_but_the_tools_own(tmp_path):
    (tmp_path / "kept.txt").write_text("before")
    before = checkout_paths(tmp_path)
    (tmp_path / "data" / "vae-cli-cache").mkdir(parents=True)
    (tmp_path / "data" / "vae-cli-cache" / "digits-0.pt").write_bytes(b"")
    (tmp_path / ".hypothesis").mkdir()
    for tool in ("__pycache__", ".pytest_cache", ".git", "pkg/__pycache__"):
        (tmp_path / tool).mkdir(parents=True, exist_ok=True)
        (tmp_path / tool / "x").write_text("")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True)
    cache = os.path.join("data", "vae-cli-cache")
    assert sorted(checkout_paths(tmp_path) - before) == [
        ".hypothesis",
        "data",
        cache,
        os.path.join(cache, "digits-0.pt"),
        "pkg",
    ]
    assert checkout_paths(tmp_path, skip=(tmp_path / "data").resolve()) - before == {".hypothesis", "pkg"}
