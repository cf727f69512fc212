"""The shim's cached pid (os.getpid() is a system call on every send otherwise)."""

from __future__ import annotations

import os

import client_shim.link as link


def test_current_pid_follows_a_fork():
    link._install_hooks()                     # what making any link does
    assert link.current_pid() == os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, b"%d %d" % (link.current_pid(), os.getpid()))
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 100).split()
    os.close(r)
    os.waitpid(pid, 0)
    assert int(got[0]) == int(got[1]) == pid != os.getpid()
    assert link.current_pid() == os.getpid()
