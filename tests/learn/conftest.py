"""The learner's fixtures: a serve directory whose store is filled as the server fills it."""
import pytest


@pytest.fixture
def filled(tmp_path, tiny_models):
    """A serve directory whose store holds 60 consented chatterbot conversations and 10 unconsented ones."""
    from convlearn.store import Store, default_url
    from learnstore import chats, talk
    folder = tmp_path / "live"
    store = Store(default_url(folder))
    keys = {"sharing": store.add_key("sharing", consent_default=True), "private": store.add_key("private")}
    for i, conv in enumerate(chats(60)):
        talk(store, keys["sharing"], conv, f"s{i}")
    for i, conv in enumerate(chats(10, skip=60)):
        talk(store, keys["private"], conv, f"p{i}")
    store.engine.dispose()
    return folder, keys
