"""--run-as: what is handed to the user, and the user checked (tracer/host/privileges.py)."""

from __future__ import annotations

import pytest

from tracer.host import privileges


def test_run_as_hands_over_the_database_but_never_a_shared_directory(tmp_path, monkeypatch):
    import os

    owned = tmp_path / "state"
    owned.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    db = owned / "timeline.db"
    db.write_text("")
    calls = []
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: calls.append(path))
    privileges.hand_over([owned, db, owned / "timeline.db-wal", shared], privileges.Account("nobody", 65534, 65534))
    assert calls == [owned, db]  # no -wal yet, and /tmp-like directories are left alone


def test_an_unknown_user_or_root_is_refused_in_one_line():
    with pytest.raises(privileges.PrivilegeError, match="no such user"):
        privileges.account("no-such-user-here")
    with pytest.raises(privileges.PrivilegeError, match="that is root"):
        privileges.account("root")
