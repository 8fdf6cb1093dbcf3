"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary folder, `pg_ctl` on a free loopback port, a password-protected role."""
import glob, os, secrets, shutil, socket, subprocess, time
from pathlib import Path


def bindir() -> Path | None:
    "The folder of PostgreSQL's server programs (Debian keeps them off PATH, in /usr/lib/postgresql/VERSION/bin), or None."
    found = shutil.which('initdb') or shutil.which('pg_ctl')
    if found: return Path(found).resolve().parent
    versions = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'), key=lambda p: int(p.split('/')[4]) if p.split('/')[4].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Cluster:
    "A PostgreSQL server of the tests' own, listening on 127.0.0.1 only; `url(db)` is an address without the password (PGPASSWORD holds it)."
    def __init__(self, base: Path, durable: bool = False):
        self.bin, self.base = bindir(), Path(base)
        self.durable = durable # fsync on, as a real server (the tests turn it off: nothing they write must survive a crash)
        self.data, self.sock, self.log = self.base / 'data', self.base / 'sock', self.base / 'server.log'
        self.port = _free_port()
        self.superpw, self.user, self.password = secrets.token_hex(12), 'mlnb', 'pw-' + secrets.token_hex(12)
        self.as_owner = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else [] # PostgreSQL refuses to run as root

    def _run(self, *args, **kw):
        return subprocess.run([*self.as_owner, *map(str, args)], check=True, capture_output=True, text=True, timeout=120, **kw)

    def start(self):
        "initdb (first time) and start the server; returns self."
        if not self.data.exists():
            self.sock.mkdir(parents=True)
            pw = self.base / 'superpw'
            pw.write_text(self.superpw)
            if self.as_owner: shutil.chown(self.base, 'postgres'); shutil.chown(self.sock, 'postgres'); shutil.chown(pw, 'postgres')
            self._run(self.bin / 'initdb', '-D', self.data, '-U', 'postgres', '--pwfile', pw, '--auth=scram-sha-256', '-E', 'UTF8',
                      '--no-sync', '--locale=C')
            pw.unlink()
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock}"
        if not self.durable: opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(self.bin / 'pg_ctl', '-D', self.data, '-l', self.log, '-w', '-t', '60', '-o', opts, 'start')
        return self

    def stop(self, mode='fast'):
        "Stop the server (it can be started again on the same port)."
        self._run(self.bin / 'pg_ctl', '-D', self.data, '-m', mode, '-w', 'stop')

    def admin(self, sql: str, *args, dbname: str = 'postgres'):
        "Run `sql` as the superuser (autocommit)."
        import psycopg
        with psycopg.connect(host='127.0.0.1', port=self.port, user='postgres', password=self.superpw, dbname=dbname, autocommit=True) as c:
            cur = c.execute(sql, args or None)
            return cur.fetchall() if cur.description else None

    def setup_role(self):
        "The role the tests' mlnb connects as, with a password."
        from psycopg import sql
        import psycopg
        with psycopg.connect(host='127.0.0.1', port=self.port, user='postgres', password=self.superpw, dbname='postgres', autocommit=True) as c:
            c.execute(sql.SQL('create role {} login password {}').format(sql.Identifier(self.user), sql.Literal(self.password)))
        return self

    def new_database(self, name: str | None = None) -> str:
        "A new, empty database owned by the tests' role; returns its address (no password in it)."
        from psycopg import sql
        import psycopg
        name = name or 'db_' + secrets.token_hex(4)
        with psycopg.connect(host='127.0.0.1', port=self.port, user='postgres', password=self.superpw, dbname='postgres', autocommit=True) as c:
            c.execute(sql.SQL('create database {} owner {}').format(sql.Identifier(name), sql.Identifier(self.user)))
        return self.url(name)

    def url(self, dbname: str, password: bool = False) -> str:
        return f"postgresql://{self.user}{':' + self.password if password else ''}@127.0.0.1:{self.port}/{dbname}"

    @property
    def env(self) -> dict:
        "What a process needs to reach the server as the tests' role: the password in PGPASSWORD, as a team would give it."
        return {'PGPASSWORD': self.password}
