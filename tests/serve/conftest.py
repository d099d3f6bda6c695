"""The serve tests' fixture: one server on the tiny Qwen2 twin per test module (its helpers: servehelpers.py)."""
import pytest

from convlearn.serve.api import Limits
from convlearn.serve.server import start_in_thread
from helpers import free_port


@pytest.fixture(scope="module")
def live(tiny_models, tmp_path_factory):
    """One server on the tiny Qwen2 twin: two generations at once, two waiting."""
    folder = tmp_path_factory.mktemp("live")
    server = start_in_thread(str(tiny_models["qwen2"]), free_port(), folder=folder, device="cpu", poll_s=0.2,
                             limits=Limits(concurrency=2, queue=2, queue_timeout_s=20, max_tokens=256))
    server.keys = {"private": server.store.add_key("private"),                      # consent default off
                   "sharing": server.store.add_key("sharing", consent_default=True),
                   "admin": server.store.add_key("ops", admin=True)}               # sees store-wide figures
    yield server
    server.stop()
