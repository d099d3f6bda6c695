"""A real PostgreSQL for the tests: a throwaway cluster (Debian's `postgresql` package, which `make test`
installs where it can) in a temp folder, on 127.0.0.1 and a free port, with a password, so the store is tested
against the server replicas would share. Root cannot run a cluster: as root it runs as the `postgres` user."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from helpers import free_port

USER, PASSWORD = "convlearn", "pw-" + uuid.uuid4().hex[:12]


def binaries() -> Path | None:
    """The folder with initdb and pg_ctl (Debian keeps them out of PATH), or None where PostgreSQL is absent."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class Cluster:
    def __init__(self):
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (make postgres installs Debian's postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="convlearn-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self.as_user:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run("initdb", "-D", self.data, "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8")
        pwfile.unlink()
        self._run("pg_ctl", "-D", self.data, "-l", self.root / "log", "-w", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200 "
                  "-c fsync=off", "start")

    def _run(self, tool: str, *args) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *map(str, args)], capture_output=True, text=True,
                              timeout=120)
        if done.returncode:
            raise RuntimeError(f"{tool}: {done.stderr.strip() or done.stdout.strip()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on the cluster; its URL (with the password)."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
