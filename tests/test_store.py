"""A team's store: the ledger in PostgreSQL shared by two clones, migrations, promotion across machines, the store going away, no password anywhere."""
import json, os, secrets, shutil, sqlite3, subprocess, sys, time
from pathlib import Path

import pytest

from conftest import MLNB, mlnb, postgres_cluster, step_notebook as _notebook

HERE = Path(__file__).parent
WORSE = ['-p', 'n_estimators=3', '-p', 'max_depth=2']


def tiny(root, store=None):
    "A project of two steps whose gate promotes the higher `score` (no model store needed): evaluate, then `wait`."
    (root / 'nbs').mkdir(parents=True)
    _notebook(root / 'nbs' / 'evaluate.ipynb', 'score = 0',
              'import mlnb\ncurrent = mlnb.champion("m")\n'
              'mlnb.gate("m", candidate=f"m:v{score}", metrics={"score": float(score)},\n'
              '          champion_metrics={"score": float(current.split(":v")[1])} if current else None, champion_tag=current)')
    # `wait` marks that it started (file `me` in `folder`), then waits for file `other` (another run's mark) or `pause` seconds
    _notebook(root / 'nbs' / 'wait.ipynb', 'folder = ""\nme = ""\nother = ""\npause = 0.0\nupstream = None',
              'import os, time, mlnb\nif folder: open(os.path.join(folder, me), "w").close()\n'
              'end = time.time() + 120\nwhile other and not os.path.exists(os.path.join(folder, other)) and time.time() < end: time.sleep(0.05)\n'
              'time.sleep(pause)\nmlnb.record("done", True)')
    (root / 'pyproject.toml').write_text(
        '[project]\nname = "tiny"\n[tool.nbdev]\nlib_path = "tiny"\n[tool.mlnb]\n' + (f'store = "{store}"\n' if store else '') +
        '[tool.mlnb.steps.evaluate]\nnotebook = "nbs/evaluate.ipynb"\n'
        '[tool.mlnb.steps.wait]\nnotebook = "nbs/wait.ipynb"\nneeds = ["evaluate"]\n'
        '[tool.mlnb.gate]\nmetric = "score"\n')
    return root


def _with_store(root, url):
    "Point the project at `root` to the team store `url` (`[tool.mlnb] store`)."
    toml = (root / 'pyproject.toml').read_text()
    assert '\n[tool.mlnb]\n' in toml
    (root / 'pyproject.toml').write_text(toml.replace('\n[tool.mlnb]\n', f'\n[tool.mlnb]\nstore = "{url}"\n', 1))


def _json(*args, cwd, env):
    return json.loads(mlnb(*args, '--json', cwd=cwd, env=env).stdout)


def test_a_ledger_made_before_versioned_migrations_is_adopted_without_losing_a_row(tmp_path):
    # tests/data/ledger-before-migrations.db was written by mlnb at the commit before versioned migrations, running `tiny`
    # (score 1, then 2, then 2 again, cached; `mlnb rollback m`; score 0), plus a live comparison and a build
    root = tiny(tmp_path / 'tiny')
    (root / '.mlnb').mkdir()
    shutil.copy(HERE / 'data' / 'ledger-before-migrations.db', root / '.mlnb' / 'ledger.db')
    tables = ('runs', 'steps', 'gates', 'champions', 'builds', 'evidence')
    def rows():
        db = sqlite3.connect(root / '.mlnb' / 'ledger.db')
        try: return {t: db.execute(f'select * from {t} order by rowid').fetchall() for t in tables}
        finally: db.close()
    before = rows()
    assert [len(before[t]) for t in tables] == [4, 8, 3, 3, 1, 1]

    runs = _json('runs', cwd=root, env={})
    assert [r['status'] for r in runs] == ['ok'] * 4 and [r['steps'] for r in runs][1] == {'cached': 2}
    after = rows()
    for t in tables: # every row kept, every column of it as it was (new columns come after the old ones)
        assert [r[:len(b)] for r, b in zip(after[t], before[t])] == before[t] and len(after[t]) == len(before[t]), t
    db = sqlite3.connect(root / '.mlnb' / 'ledger.db')
    try:
        from mlnb.migrations import HEAD
        assert db.execute('select version_num from alembic_version').fetchall() == [(HEAD,)]
        for t in ('gates', 'champions', 'builds', 'evidence'):
            uids = [u for (u,) in db.execute(f'select uid from {t}')]
            assert len(set(uids)) == len(uids) and all(isinstance(u, str) and len(u) == 32 for u in uids), t
    finally: db.close()
    assert 'revision' in mlnb('store', 'status', cwd=root).stdout
    hist = _json('history', 'm', cwd=root, env={})
    assert [(h['kind'], h['tag']) for h in hist] == [('gate', 'm:v1'), ('gate', 'm:v2'), ('rollback', 'm:v1')]
    # the adopted ledger goes on: the gate compares with its champion, m:v1
    out = mlnb('run', '--engine', 'fast', '-p', 'score=3', cwd=root).stdout
    assert 'gate: m:v3: score 3.0000 vs champion 1.0000' in out and '(now the champion)' in out
    assert [h['tag'] for h in _json('history', 'm', cwd=root, env={})][-1] == 'm:v3'


def test_migrations_of_a_team_store_are_explicit_and_checked_at_start(postgres, tmp_path):
    db = 'mig_' + secrets.token_hex(4)
    url = postgres.new_database(db)
    root = tiny(tmp_path / 'tiny', url)
    env = postgres.env
    r = mlnb('runs', cwd=root, env=env, check=False)
    assert r.returncode == 1 and f'The store {url} is empty' in r.stderr and 'Run `mlnb store upgrade`' in r.stderr, r.stderr
    assert 'no ledger yet (run `mlnb store upgrade`)' in mlnb('store', 'status', cwd=root, env=env).stdout
    # a database one revision behind: refused by every command until `mlnb store upgrade`
    from mlnb.store import Store
    Store(postgres.url(db, password=True), check=False).upgrade('0001')
    for cmd in (['runs'], ['run', '--engine', 'fast'], ['history', 'm'], ['flag', '--file', 'flags.json']):
        r = mlnb(*cmd, cwd=root, env=env, check=False)
        assert r.returncode == 1 and 'at schema revision 0001, behind this mlnb' in r.stderr and 'mlnb store upgrade' in r.stderr, (cmd, r.stderr)
    assert 'behind this mlnb' in mlnb('store', 'status', cwd=root, env=env).stdout
    from mlnb.migrations import HEAD
    assert f'schema revision 0001 -> {HEAD}' in mlnb('store', 'upgrade', cwd=root, env=env).stdout
    assert f'already at schema revision {HEAD}' in mlnb('store', 'upgrade', cwd=root, env=env).stdout
    assert _json('runs', cwd=root, env=env) == []
    # a database made by a newer mlnb: refused, upgrade included, with what to do
    postgres.admin("update alembic_version set version_num = '0099'", dbname=db)
    for cmd in (['runs'], ['store', 'upgrade']):
        r = mlnb(*cmd, cwd=root, env=env, check=False)
        assert r.returncode == 1 and 'revision 0099, made by a newer mlnb' in r.stderr and 'Upgrade mlnb' in r.stderr, (cmd, r.stderr)
    # the client of mlnb[team] is what reaches PostgreSQL; the password never comes from pyproject.toml
    (root / 'pyproject.toml').write_text((root / 'pyproject.toml').read_text().replace(url, postgres.url(db, password=True)))
    r = mlnb('runs', cwd=root, env=env, check=False)
    assert r.returncode == 2 and 'PGPASSWORD' in r.stderr and postgres.password not in r.stderr and 'mlnb:***@' in r.stderr, r.stderr


def test_a_teams_flags_live_in_the_store_and_reach_every_server(postgres, tmp_path, monkeypatch):
    url = postgres.new_database()
    a, b = tiny(tmp_path / 'a', url), tiny(tmp_path / 'b', url)
    env = postgres.env
    mlnb('store', 'upgrade', cwd=a, env=env)
    mlnb('flag', 'fallback', 'on', '--reason', 'model down', '--file', a / 'flags.json', cwd=a, env=env)
    # another machine sees the team's flag before its own file does, and writes it there with --sync
    shown = _json('flag', '--file', b / 'flags.json', cwd=b, env=env)
    assert (shown['fallback']['on'], shown['fallback']['reason']) == (True, 'model down') and not (b / 'flags.json').exists()
    mlnb('flag', '--sync', '--file', b / 'flags.json', cwd=b, env=env)
    assert json.loads((b / 'flags.json').read_text())['fallback'] == shown['fallback']
    # what `mlnb serve` does every two seconds: the file beside a server follows the store
    from mlnb.flags import follow_flags
    monkeypatch.setenv('PGPASSWORD', postgres.password)
    follow = follow_flags(b, b / 'served.json', every=0)
    assert json.loads((b / 'served.json').read_text())['fallback']['on'] is True
    mlnb('flag', 'fallback', 'off', '--file', a / 'flags.json', cwd=a, env=env)
    follow()
    assert json.loads((b / 'served.json').read_text())['fallback']['on'] is False
    r = mlnb('flag', '--sync', '--file', 'x.json', cwd=tiny(tmp_path / 'solo'), env=env, check=False) # a project's own SQLite file: its file is the truth
    assert r.returncode == 2 and "this project's flags are its file's" in r.stderr, r.stderr


def test_two_machines_gating_at_once_promote_exactly_one(postgres, tmp_path):
    url = postgres.new_database()
    a, b = tiny(tmp_path / 'a', url), tiny(tmp_path / 'b', url)
    env = {**os.environ, **postgres.env}
    mlnb('store', 'upgrade', cwd=a, env=postgres.env)
    barrier = tmp_path / 'barrier'
    barrier.mkdir()
    # both runs decide "promote" against no champion; each then waits in step `wait` until the other has decided too
    procs = {name: subprocess.Popen([MLNB, 'run', '--engine', 'fast', '-p', f'score={score}', '-p', f'folder={barrier}', '-p', f'me={name}',
                                     '-p', f'other={other}'], cwd=root, env={**env, 'BENTOML_HOME': str(tmp_path / f'home_{name}')},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, score, other, root in (('a', 1, 'b', a), ('b', 2, 'a', b))}
    outs = {name: p.communicate(timeout=600) for name, p in procs.items()}
    for name, p in procs.items(): assert p.returncode == 0, outs[name]
    runs = _json('runs', cwd=b, env=postgres.env)
    assert len(runs) == 2 and {r['status'] for r in runs} == {'ok'}
    gates = sorted((g for r in runs for g in r['gates']), key=lambda g: g['status'])
    assert [(g['status'], g['promote'], g['champion']) for g in gates] == [('applied', True, None), ('stale', True, None)]
    winner, loser = gates[0]['candidate'], gates[1]['candidate']
    assert 'the champion changed while the run was going' in gates[1]['outcome']
    hist = _json('history', 'm', cwd=a, env=postgres.env)
    assert [(h['kind'], h['previous'], h['tag']) for h in hist] == [('gate', None, winner)]
    # the machine whose decision went stale decides again, against the champion of the other
    loser_root = a if loser == 'm:v1' else b
    out = mlnb('run', '--engine', 'fast', '-p', f"score={loser.split(':v')[1]}", cwd=loser_root, env=postgres.env).stdout
    assert f"vs champion {float(winner.split(':v')[1]):.4f}" in out
    hist = _json('history', 'm', cwd=b, env=postgres.env)
    assert [h['previous'] for h in hist][1:] == [h['tag'] for h in hist][:-1] # one chain: each change starts from the champion before it
    assert hist[-1]['tag'] == 'm:v2'


def test_write_transactions_of_two_machines_follow_one_another_and_a_killed_one_leaves_nothing(postgres):
    import threading
    from mlnb.champions import current_champion, move_champion
    from mlnb.store import Store
    db = 'tx_' + secrets.token_hex(4)
    postgres.new_database(db)
    url = postgres.url(db, password=True)
    Store(url, check=False).upgrade()
    first, second = Store(url), Store(url) # two connections, as two machines have
    seen = threading.Event()
    def promote():
        with first.tx() as tx:
            current = current_champion(tx, 'm')
            seen.set()
            time.sleep(1.0) # the other machine's compare-and-set comes now, and must wait for this one
            move_champion(tx, 'm:v1', 'gate', 'first', None, current)
    t = threading.Thread(target=promote)
    t.start()
    assert seen.wait(30)
    with second.tx() as tx:
        current = current_champion(tx, 'm')
        if current is None: move_champion(tx, 'm:v2', 'gate', 'second', None, current)
    t.join()
    assert current == 'm:v1' and [r['tag'] for r in second.all('select tag from champions order by seq')] == ['m:v1']
    # a process killed in the middle of its transaction changes nothing, and the lock it held is free again
    code = ('import sys, time\nfrom mlnb.champions import move_champion\nfrom mlnb.store import Store\n'
            'with Store(sys.argv[1]).tx() as tx:\n    move_champion(tx, "m:v9", "gate", "killed", None, "m:v1")\n'
            '    print("inside", flush=True)\n    time.sleep(60)\n')
    proc = subprocess.Popen([sys.executable, '-c', code, url], stdout=subprocess.PIPE, text=True)
    try: assert proc.stdout.readline().strip() == 'inside'
    finally: proc.kill(); proc.wait()
    with second.tx() as tx: assert current_champion(tx, 'm') == 'm:v1'


def test_the_store_going_away_mid_run_fails_that_run_and_the_next_completes(tmp_path):
    cluster = postgres_cluster() # a server of this test's own: it is stopped in the middle of a run
    try:
        db = 'faults'
        cluster.new_database(db)
        secret_url = cluster.url(db, password=True)
        root = tiny(tmp_path / 'tiny')
        env = {'MLNB_STORE': secret_url} # the password in the address, from the environment: it must show nowhere
        mlnb('store', 'upgrade', cwd=root, env=env)
        marks = tmp_path / 'marks'
        marks.mkdir()
        proc = subprocess.Popen([MLNB, 'run', '--engine', 'fast', '-p', 'score=1', '-p', f'folder={marks}', '-p', 'me=started', '-p', 'pause=4'],
                                cwd=root, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not (marks / 'started').exists() and time.time() < deadline and proc.poll() is None: time.sleep(0.05)
        assert (marks / 'started').exists(), proc.communicate()
        cluster.stop() # while step `wait` runs: the run fails when it records the step
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (out, err)
        shown = f'postgresql://{cluster.user}:***@127.0.0.1:{cluster.port}/{db}'
        assert 'stopped: The store ' + shown + ' (PostgreSQL) could not be reached or failed' in err, err
        assert 'run the command again' in err and '`mlnb run` reuses the steps it finished' in err, err
        assert cluster.password not in out + err
        cluster.start()
        res = mlnb('run', '--engine', 'fast', '-p', 'score=1', cwd=root, env=env)
        assert cluster.password not in res.stdout + res.stderr
        runs = _json('runs', cwd=root, env=env)
        assert [r['status'] for r in runs] == ['ok', 'killed'] # the run that lost its store is reaped as killed
        first = _json('show', runs[1]['id'], cwd=root, env=env)
        assert [(g['status'], g['applied']) for g in first['gates']] == [('abandoned', False)] # it promoted nothing
        assert {s['step']: s['status'] for s in first['steps']} == {'evaluate': 'ok', 'wait': 'killed'}
        assert [(g['status'], g['applied']) for g in runs[0]['gates']] == [('applied', True)]
        assert [h['run_id'] for h in _json('history', 'm', cwd=root, env=env)] == [runs[0]['id']]
    finally:
        try: cluster.stop('immediate')
        except subprocess.CalledProcessError: pass
        shutil.rmtree(cluster.base, ignore_errors=True)


def test_the_scaffold_in_two_clones_shares_one_team_store_and_writes_no_password(postgres, scaffold_template, tmp_path):
    db = 'team_' + secrets.token_hex(4)
    url = postgres.new_database(db)
    a, b = tmp_path / 'a' / 'churn', tmp_path / 'b' / 'churn'
    for root in (a, b):
        shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
        _with_store(root, url)
    homes = {a: tmp_path / 'home_a', b: tmp_path / 'home_b'} # two machines: two model stores
    # clone A gives the password in the address (MLNB_STORE), clone B as PostgreSQL's client expects it (PGPASSWORD)
    envs = {a: {'BENTOML_HOME': str(homes[a]), 'MLNB_STORE': postgres.url(db, password=True)}, b: {'BENTOML_HOME': str(homes[b]), **postgres.env}}
    said = []
    def cli(root, *args, check=True):
        res = mlnb(*args, cwd=root, env=envs[root], check=check)
        said.append(res.stdout + res.stderr)
        return res
    def champion(root):
        return next((m['tag'] for m in json.loads(cli(root, 'models', 'churn', '--json').stdout) if m['champion']), None)

    r = cli(a, 'run', '--engine', 'fast', check=False) # the team's database is new: nothing runs before `mlnb store upgrade`
    assert r.returncode == 1 and 'mlnb store upgrade' in r.stderr and postgres.password not in r.stderr, r.stderr
    cli(b, 'store', 'upgrade')
    assert '(now the champion)' in cli(a, 'run', '--engine', 'fast', *WORSE).stdout
    weak = champion(a)
    assert ': 4 cached.' in cli(a, 'run', '--engine', 'fast', *WORSE).stdout # the re-run reuses every step
    assert '(now the champion)' in cli(a, 'run').stdout # the kernel engine this time: each step in a kernel of its own
    strong = champion(a)
    assert weak and strong and weak != strong

    # clone B, on another machine, reads the team's runs and history, and rolls back
    runs = json.loads(cli(b, 'runs', '--json').stdout)
    assert [r['status'] for r in runs] == ['ok', 'ok', 'ok'] and [r['steps'] for r in runs][1] == {'cached': 4}
    shown = json.loads(cli(b, 'show', runs[-1]['id'][:16], '--json').stdout)
    assert [s['status'] for s in shown['steps']] == ['ok'] * 4 and shown['gates'][0]['status'] == 'applied'
    hist = json.loads(cli(b, 'history', 'churn', '--json').stdout)
    assert [(h['kind'], h['previous'], h['tag']) for h in hist] == [('gate', None, weak), ('gate', weak, strong)]
    assert 'Report: ' in cli(b, 'report').stdout and list((b / '.mlnb' / 'runs').glob('*/report.html')) # from the team's ledger alone
    assert f'{weak} is the champion' in cli(b, 'rollback', 'churn').stdout
    hist = json.loads(cli(a, 'history', 'churn', '--json').stdout)
    assert [(h['kind'], h['tag']) for h in hist][-1] == ('rollback', weak)
    assert champion(a) == weak
    # with the models at hand (B's model store is A's here, as a shared model store gives), B lists them and their lineage
    envs[b]['BENTOML_HOME'] = str(homes[a])
    assert champion(b) == weak
    lin = json.loads(cli(b, 'lineage', strong, '--json').stdout)
    assert lin['run']['id'] == runs[0]['id'] and lin['gate']['status'] == 'applied'

    # a Bento, then no trace of the password: not in the ledger, the run folders, the executed notebooks, the models, the Bento, any output
    cli(a, 'build')
    pw = postgres.password
    found = [str(p) for top in (a, b, homes[a], homes[b]) for p in top.rglob('*') if p.is_file() and pw.encode() in p.read_bytes()]
    assert found == []
    assert not any(pw in s for s in said)
    import psycopg
    with psycopg.connect(host='127.0.0.1', port=postgres.port, user=postgres.user, password=pw, dbname=db) as c:
        tables = [t for (t,) in c.execute("select table_name from information_schema.tables where table_schema = 'public'")]
        assert {'runs', 'steps', 'gates', 'champions', 'builds', 'evidence', 'flags', 'alembic_version'} <= set(tables)
        dump = ''.join(str(c.execute(f'select * from "{t}"').fetchall()) for t in tables)
    assert strong in dump and pw not in dump and 'mlnb:***@' not in dump


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql'])
def test_the_newest_outputs_go_by_when_they_were_made_in_either_store(backend, request, tmp_path, monkeypatch):
    "A cached run reuses outputs made earlier: `Ledger.newest` (what a hand run reads upstream) orders by when outputs were made, never by when a run reused them, in SQLite and in PostgreSQL alike."
    from mlnb.ledger import Ledger, new_run_id
    from mlnb.store import Store
    root = tmp_path / 'p'
    root.mkdir()
    (root / 'pyproject.toml').write_text('[project]\nname = "p"\n[tool.mlnb]\n')
    if backend == 'postgresql':
        pg = request.getfixturevalue('postgres')
        db = 'made_' + secrets.token_hex(4)
        pg.new_database(db)
        monkeypatch.setenv('MLNB_STORE', pg.url(db, password=True))
        Store(pg.url(db, password=True), check=False).upgrade()
    led = Ledger(root)
    assert (led.path is None) == (backend == 'postgresql')
    led.start_run(made := new_run_id(), root=root)
    led.start_step(made, 'data', params={'seed': 1}, fingerprint='fp1', notebook=None, parts={'params': {'seed': 1}})
    led.finish_step(made, 'data', 'ok', outputs={'n_rows': 11})
    time.sleep(0.01)
    led.record_interactive(hand := 'hand-' + new_run_id(), 'data', root=root, notebook='nbs/01_data.ipynb', params={'seed': 4}, name='n_rows', payload=12)
    time.sleep(0.01)
    led.start_run(reuse := new_run_id(), root=root)
    led.finish_step(reuse, 'data', 'cached', outputs={'n_rows': 11}, cached_from=made) # reuses what `made` made, after the hand run
    n, p = led.newest('data'), led.newest('data', 'pipeline')
    assert (n['run_id'], n['kind'], n['outputs']) == (hand, 'interactive', {'n_rows': 12}) # the hand run's outputs are newer than the reused ones
    assert (p['run_id'], p['reused_by'], p['outputs']) == (made, reuse, {'n_rows': 11}) and p['made'] < n['made']
    assert led.newest('data', run=reuse)['run_id'] == made and led.newest('data', 'hand')['run_id'] == hand
    led.close()
