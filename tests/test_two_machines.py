"""Two machines of a team: two clones of the project in two folders, two BentoML homes, no shared disk but the two servers,
a PostgreSQL server for the ledger and an S3 server (SeaweedFS) for the artifacts, both set.

Machine A runs the scaffold once (module-scoped); a fresh clone reuses every step, lists and builds A's champion and reproduces it;
two machines gate at once; Dask workers in a folder of their own run the pipeline from the stores alone; the ported projects go
through both stores; and neither the database password nor the S3 secret key lands anywhere.
"""
import json, os, re, secrets, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import nbformat
import pytest

from conftest import MLNB, git_snapshot, mlnb, model_metadata, run
from test_store import _with_store
from test_team_store import files_holding, use_store

SEEN = {'folders': [], 'said': [], 'databases': []} # everything the machines wrote or printed, for the scan at the end


def both_stores(root: Path, postgres, s3_server, name: str) -> dict:
    "Point the project at `root` to a new database of the PostgreSQL server and a fresh prefix of the S3 bucket."
    db, url = f'{name}_{secrets.token_hex(3)}', use_store(root, s3_server, name) # (use_store adds [tool.mlnb] if need be)
    _with_store(root, postgres.new_database(db))
    SEEN['databases'].append(db)
    return {'db': db, 'url': url}


def machine(root: Path, home: Path, postgres, s3_server) -> dict:
    "A machine: a project folder and a BentoML home of its own; the servers' credentials in its environment only."
    SEEN['folders'] += [root, home]
    return {'root': root, 'env': {**s3_server.env(), **postgres.env, 'BENTOML_HOME': str(home)}}


def cli(m: dict, *args, check=True):
    "`mlnb ARGS` on machine `m`; what it printed is kept for the scan."
    res = mlnb(*args, cwd=m['root'], env=m['env'], check=check)
    SEEN['said'].append(res.stdout + res.stderr)
    return res


def clone(team: dict, name: str, postgres, s3_server, tmp: Path) -> dict:
    "Another machine: a git clone of A's project (no `.mlnb/`), an empty BentoML home."
    root = tmp / name / 'churn'
    run(['git', 'clone', '-q', str(team['a']['root']), str(root)], tmp)
    assert not (root / '.mlnb').exists()
    return machine(root, tmp / name / 'bentoml', postgres, s3_server)


def models_json(m: dict, name: str) -> list[dict]:
    return json.loads(cli(m, 'models', name, '--json').stdout)


@pytest.fixture(scope='module')
def team(scaffold_template, postgres, s3_server, tmp_path_factory):
    "The team's two servers, and machine A: the scaffold (profile ci) run once with both stores, its champion built."
    tmp = tmp_path_factory.mktemp('team')
    root = tmp / 'a' / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    stores = both_stores(root, postgres, s3_server, 'churn')
    git_snapshot(root)
    a = machine(root, tmp / 'a' / 'bentoml', postgres, s3_server)
    cli(a, 'store', 'upgrade')
    out = cli(a, 'run', '--engine', 'fast', '--profile', 'ci').stdout
    assert 'now the champion' in out and ': 4 ok.' in out, out
    (champ,) = [x['tag'] for x in models_json(a, 'churn') if x['champion']]
    return {'a': a, 'tmp': tmp, 'champion': champ, **stores}


def test_a_fresh_clone_reuses_every_step_lists_and_builds_the_teams_champion(team, postgres, s3_server):
    b = clone(team, 'b', postgres, s3_server, team['tmp'])
    package = {f: f.stat().st_mtime_ns for f in (b['root'] / 'churn').rglob('*.py')}
    out = cli(b, 'run', '--profile', 'ci').stdout # the default engine, kernels
    assert ': 4 cached.' in out, out # nothing executed: the cache index is the team's, the outputs are in S3
    assert not (b['root'] / '.mlnb' / 'kernels').exists() # no kernel was started for a run that executes nothing
    assert package and {f: f.stat().st_mtime_ns for f in (b['root'] / 'churn').rglob('*.py')} == package # not exported again: A's export is known
    assert not (b['root'] / '.mlnb' / 'cache').exists() # a cached step fetches nothing: only a step that runs reads its inputs
    runs = json.loads(cli(b, 'runs', '--json').stdout)
    assert [r['steps'] for r in runs] == [{'cached': 4}, {'ok': 4}]
    # B's model store is empty; `mlnb models` lists the team's models, A's champion marked
    listed = models_json(b, 'churn')
    assert [(x['tag'], x['champion'], x['local']) for x in listed] == [(team['champion'], True, False)], listed
    assert listed[0]['gate']['status'] == 'applied' and listed[0]['training_metrics']
    table = cli({**b, 'env': {**b['env'], 'COLUMNS': '250'}}, 'models').stdout
    assert team['champion'].split(':')[1][:8] in table and 'team store' in table, table
    # ... and B builds it (fetched from S3) and verifies the Bento against the golden examples
    bento = cli(b, 'build').stdout.split()[1].rstrip('.')
    out = cli(b, 'verify').stdout
    assert 'golden examples' in out and team['champion'] in out and bento in out, out
    assert [(x['tag'], x['local']) for x in models_json(b, 'churn')] == [(team['champion'], True)] # now in B's store too


def test_reproduce_on_another_machine_with_the_shared_ledger(team, postgres, s3_server):
    c = clone(team, 'c', postgres, s3_server, team['tmp'])
    csv = c['root'] / 'data' / 'customers.csv'
    csv.write_text(''.join(csv.read_text().splitlines(keepends=True)[:200])) # C's data changed since: the snapshot is what A read
    out = cli(c, 'reproduce', team['champion'], '--check', '-q', '--engine', 'fast').stdout
    assert f"Reproduced {team['champion']} as churn:" in out and 'inputs from their snapshots (data/customers.csv' in out, out
    assert 'fingerprints: equal (data, features, train)' in out and 'golden predictions: bit-identical (20 rows)' in out, out
    assert 'metrics: equal (train_roc_auc)' in out and 'differs' not in out, out
    assert len(csv.read_text().splitlines()) == 200 # C's checkout is left as it was
    assert run(['git', 'worktree', 'list'], c['root']).stdout.count('\n') == 1 # the scratch worktree is gone


BARRIER = ('#| notest\nimport os, time\nif os.environ.get("MLNB_TEST_BARRIER"): # both machines have gated before either run ends\n'
           '    open(os.path.join(os.environ["MLNB_TEST_BARRIER"], os.environ["MLNB_TEST_ME"]), "w").close()\n'
           '    _end = time.time() + 300\n'
           '    while not os.path.exists(os.path.join(os.environ["MLNB_TEST_BARRIER"], os.environ["MLNB_TEST_OTHER"])) and time.time() < _end:\n'
           '        time.sleep(0.1)')


def test_two_machines_running_at_once_promote_exactly_one(scaffold_template, postgres, s3_server, tmp_path):
    # a team of its own (a new database, a new prefix), so that both runs gate against no champion
    tpl = tmp_path / 'tpl' / 'churn'
    shutil.copytree(scaffold_template, tpl, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    both_stores(tpl, postgres, s3_server, 'race')
    nb = nbformat.read(tpl / 'nbs' / '04_evaluate.ipynb', as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(BARRIER))
    nbformat.write(nb, tpl / 'nbs' / '04_evaluate.ipynb')
    git_snapshot(tpl)
    ms = {}
    for name in ('e', 'f'):
        run(['git', 'clone', '-q', str(tpl), str(tmp_path / name / 'churn')], tmp_path)
        ms[name] = machine(tmp_path / name / 'churn', tmp_path / name / 'bentoml', postgres, s3_server)
    cli(ms['e'], 'store', 'upgrade')
    barrier = tmp_path / 'barrier'
    barrier.mkdir()
    procs = {name: subprocess.Popen([MLNB, 'run', '--engine', 'fast', '--profile', 'ci', '-p', f'train.seed={seed}'], cwd=m['root'],
                                    env={**os.environ, **m['env'], 'MLNB_TEST_BARRIER': str(barrier), 'MLNB_TEST_ME': name,
                                         'MLNB_TEST_OTHER': 'f' if name == 'e' else 'e'},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for (name, m), seed in zip(ms.items(), (1, 2))}
    outs = {name: p.communicate(timeout=900) for name, p in procs.items()}
    SEEN['said'] += [o + e for o, e in outs.values()]
    for name, p in procs.items(): assert p.returncode == 0, outs[name]
    runs = json.loads(cli(ms['f'], 'runs', '--json').stdout)
    assert len(runs) == 2 and {r['status'] for r in runs} == {'ok'}
    gates = sorted((g for r in runs for g in r['gates']), key=lambda g: g['status'])
    assert [(g['status'], g['promote'], g['champion']) for g in gates] == [('applied', True, None), ('stale', True, None)], gates
    winner = gates[0]['candidate']
    # one history, the same from both machines; each machine's `mlnb models` marks the same champion
    hists = [json.loads(cli(m, 'history', 'churn', '--json').stdout) for m in ms.values()]
    assert hists[0] == hists[1] and [(h['kind'], h['previous'], h['tag']) for h in hists[0]] == [('gate', None, winner)]
    assert [[x['tag'] for x in models_json(m, 'churn') if x['champion']] for m in ms.values()] == [[winner], [winner]]
    assert sorted(x['tag'] for x in models_json(ms['e'], 'churn')) == sorted(g['candidate'] for g in gates) # both models, in S3


AUDIT = '''import os, sys
_forbidden = os.environ.get("MLNB_TEST_FORBIDDEN")
if _forbidden:
    _busy = []
    def _audit(event, args):
        if event not in ("open", "os.chdir", "os.listdir", "os.scandir") or _busy or not args or isinstance(args[0], int) or args[0] is None: return
        try: path = os.path.abspath(os.fsdecode(args[0]))
        except Exception: return
        if path == _forbidden or path.startswith(_forbidden + os.sep):
            _busy.append(1)
            try:
                with open(os.environ["MLNB_TEST_FORBIDDEN_LOG"], "a") as f: f.write(f"{os.getpid()} {event} {path}\\n")
            finally: _busy.pop()
    sys.addaudithook(_audit)
'''


def test_dask_workers_in_a_folder_of_their_own_run_the_scaffold_from_the_stores(team, postgres, s3_server, tmp_path_factory):
    d = clone(team, 'd', postgres, s3_server, team['tmp']) # the driver
    # the workers' folder: no project file in it; every file a worker process (or a step it runs) opens under the tests'
    # folders, where every clone lives, is written down by an audit hook (sitecustomize)
    w = Path(tempfile.mkdtemp(prefix='mlnb-workers-'))
    SEEN['folders'].append(w)
    (w / 'hook').mkdir()
    (w / 'hook' / 'sitecustomize.py').write_text(AUDIT)
    forbidden_log = w / 'forbidden.log'
    env = {**os.environ, **s3_server.env(), **postgres.env, 'BENTOML_HOME': str(w / 'bentoml'), 'PYTHONPATH': str(w / 'hook'),
           'DASK_DISTRIBUTED__WORKER__DAEMON': 'False', 'MLNB_TEST_FORBIDDEN': str(tmp_path_factory.getbasetemp().resolve()),
           'MLNB_TEST_FORBIDDEN_LOG': str(forbidden_log)}
    for k in ('MLNB_PROJECT_ROOT', 'MLNB_STORE'): env.pop(k, None)
    dask = str(Path(sys.executable).parent / 'dask')
    sched = w / 'scheduler.json'
    procs = [subprocess.Popen([dask, 'scheduler', '--host', '127.0.0.1', '--port', '0', '--no-dashboard', '--scheduler-file', str(sched)],
                              cwd=w, env=env, stdout=subprocess.DEVNULL, stderr=open(w / 'scheduler.log', 'w'), start_new_session=True)]
    try:
        deadline = time.time() + 120
        while not sched.is_file() and time.time() < deadline: time.sleep(0.2)
        address = json.loads(sched.read_text())['address']
        procs.append(subprocess.Popen([dask, 'worker', address, '--nthreads', '1', '--nworkers', '1', '--no-dashboard',
                                       '--local-directory', str(w / 'dask')], cwd=w, env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(w / 'worker.log', 'w'), start_new_session=True))
        from distributed import Client
        with Client(address, timeout='60s') as c: c.wait_for_workers(1, timeout=120)
        out = cli(d, 'run', '--executor', 'dask', '--address', address, '--engine', 'fast', '--profile', 'ci', '--force').stdout
    finally:
        for p in reversed(procs):
            p.terminate()
            try: p.wait(30)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
    assert ': 4 ok.' in out, out
    assert not forbidden_log.exists(), forbidden_log.read_text()[:3000] # no worker process opened a file of a project folder
    (last,) = json.loads(cli(d, 'runs', '--json', '-n', '1').stdout)
    shown = json.loads(cli(d, 'show', last['id'], '--json').stdout)
    assert all(Path(s['notebook']).is_file() and str(d['root']) in s['notebook'] for s in shown['steps']) # brought back to the driver
    # the model was trained on the worker (the driver's model store has none), from A's commit, on the snapshot's data
    new = [x for x in models_json(d, 'churn') if x['run_id'] == last['id']]
    assert [x['local'] for x in new] == [False] and not list(Path(d['env']['BENTOML_HOME']).glob('models/*/*/model.yaml'))
    cli(d, 'pull', new[0]['tag'])
    lineage = json.loads(model_metadata(new[0]['tag'], d['root'], d['env'])['lineage'])
    head = run(['git', 'rev-parse', 'HEAD'], team['a']['root']).stdout.strip()
    assert (lineage['git_commit'], lineage['git_dirty'], lineage['project']) == (head, False, str(d['root'])), lineage
    assert lineage['inputs'] == json.loads(model_metadata(team['champion'], team['a']['root'], team['a']['env'])['lineage'])['inputs']
    assert [x['tag'] for x in models_json(d, 'churn') if x['champion']] == [team['champion']] # the same model again: not promoted


def test_ported_projects_through_both_stores(ported, postgres, s3_server, tmp_path):
    "A multiclass and a regression project: run and built on A with both stores; on B, a copy with nothing else, all cached and verified."
    both_stores(ported, postgres, s3_server, ported.name)
    a = machine(ported, tmp_path / 'home_a', postgres, s3_server)
    cli(a, 'store', 'upgrade')
    assert 'now the champion' in cli(a, 'run', '--engine', 'fast').stdout
    bento = cli(a, 'build').stdout.split()[1].rstrip('.')
    b_root = tmp_path / 'b' / ported.name
    shutil.copytree(ported, b_root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    b = machine(b_root, tmp_path / 'home_b', postgres, s3_server)
    out = cli(b, 'run', '--engine', 'fast').stdout
    assert re.search(r' ok: \d+ cached\. ', out), out # every step reused
    name = json.loads(cli(a, 'models', '--json').stdout)[0]['name']
    assert [x['champion'] for x in models_json(b, name)] == [True]
    out = cli(b, 'verify', bento).stdout
    assert bento in out and 'golden examples' in out, out


def test_no_password_and_no_secret_key_anywhere(team, postgres, s3_server):
    "Last: the ledgers (pg_dump), run folders, executed notebooks, Bentos, model stores and all output hold neither secret."
    from postgres import bindir
    secrets_ = {'the database password': postgres.password, 'the S3 secret key': s3_server.secret}
    # pytest may run a test of this file that shares a fixture with other files (the ported projects) elsewhere in the
    # session: what it made is scanned only if it ran before this one, and the team's database is found by its name
    assert team['db'] in SEEN['databases'] and len(SEEN['folders']) >= 4 and SEEN['said']
    dumps = {db: run([str(bindir() / 'pg_dump'), '-h', '127.0.0.1', '-p', str(postgres.port), '-U', postgres.user, '--data-only', db],
                     '/', env=postgres.env).stdout for db in SEEN['databases']}
    assert team['champion'] in dumps[team['db']] # the dump is the ledger's
    folders = [f for f in SEEN['folders'] if Path(f).exists()] + [Path(tempfile.gettempdir()) / 'mlnb-away']
    for what, secret in secrets_.items():
        assert files_holding(secret, *folders) == [], what
        assert not [s for s in SEEN['said'] if secret in s], what
        assert not [d for d in dumps.values() if secret in d], what
