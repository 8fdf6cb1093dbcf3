"""Fan-out items (foreach, grid) on the local executor and on a real Dask `LocalCluster`; one champion per segment."""
import json, os, signal, sqlite3, subprocess, time
from pathlib import Path

import httpx, nbformat
import pytest

from conftest import MLNB, mlnb, model_metadata

pytest.importorskip('distributed')


def runs(root, env=None):
    return json.loads(mlnb('runs', '--json', cwd=root, env=env).stdout)


def show(root, run_id, env=None):
    return json.loads(mlnb('show', run_id, '--json', cwd=root, env=env).stdout)


def items(run, parent):
    "{item name: step row} of the items of `parent` in a `mlnb show --json` document."
    return {s['step']: s for s in run['steps'] if s['parent'] == parent}


def notebook(path, params, body):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}),
                                         nbformat.v4.new_code_cell(body)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


def tiny(root, steps_toml, notebooks):
    "A project of small notebooks {name: (parameters cell, body)} and the pipeline `steps_toml`."
    (root / 'nbs').mkdir(parents=True)
    for name, (params, body) in notebooks.items(): notebook(root / 'nbs' / f'{name}.ipynb', params, body)
    (root / 'pyproject.toml').write_text(f'[project]\nname = "{root.name}"\n[tool.nbdev]\nlib_path = "{root.name}"\n' + steps_toml)
    return root


def ledger_is_consistent(root):
    db = sqlite3.connect(root / '.mlnb' / 'ledger.db')
    try:
        assert db.execute('pragma integrity_check').fetchone()[0] == 'ok'
        assert db.execute("select count(*) from steps where status = 'running'").fetchone()[0] == 0
        assert db.execute("select count(*) from runs where status = 'running'").fetchone()[0] == 0
    finally: db.close()


def insert_cell(nb_path, source, after):
    "Insert a code cell after the first code cell whose source contains `after`."
    nb = nbformat.read(nb_path, 4)
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == 'code' and after in c.source)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source))
    nbformat.write(nb, nb_path)


REGIONS = ['east', 'north', 'south', 'west']


def test_per_region_fan_out_on_dask_matches_local(project, fresh_store):
    "The scaffold's per-region steps: local executor, then a LocalCluster of 2 worker processes; then all cached; then one failing item."
    mlnb('run', 'evaluate_region', '--profile', 'ci', '--engine', 'fast', '--jobs', '2', cwd=project)
    local = show(project, runs(project)[0]['id'])
    res = mlnb('run', 'evaluate_region', '--profile', 'ci', '--engine', 'fast', '--executor', 'dask', '--jobs', '2', '--force', cwd=project)
    assert 'items: 8 ok' in res.stdout, res.stdout
    dask = show(project, runs(project)[0]['id'])
    assert dask['executor'] == 'dask' and local['executor'] == 'local'
    for parent in ('train_region', 'evaluate_region'):
        lo, da = items(local, parent), items(dask, parent)
        assert sorted(lo) == sorted(da) == [f'{parent}[region={r}]' for r in REGIONS]
        for name in lo:
            assert lo[name]['fingerprint'] == da[name]['fingerprint'], name
            assert lo[name]['item'] == da[name]['item'] == {'region': name.split('=')[1][:-1]}
            assert Path(da[name]['notebook']).name == f'{name}.ipynb' and Path(da[name]['notebook']).is_file()
            drop = lambda o: {k: v for k, v in o.items() if k not in ('model_tag', 'gate')}
            assert drop(lo[name]['outputs']) == drop(da[name]['outputs']), name  # metrics and content-addressed models alike
    assert 0.6 < items(dask, 'evaluate_region')['evaluate_region[region=north]']['outputs']['roc_auc'] <= 1
    # the step that maps over the items gets them keyed by item label
    assert sorted({s['step']: s for s in dask['steps']}['train_region']['outputs']) == [f'region={r}' for r in REGIONS]

    # nothing changed: every item is cached, and no cluster is started for that
    t0 = time.perf_counter()
    res = mlnb('run', 'evaluate_region', '--profile', 'ci', '--engine', 'fast', '--executor', 'dask', cwd=project)
    assert 'items: 8 cached' in res.stdout and time.perf_counter() - t0 < 15, res.stdout

    # one region fails: only its own item fails, the other items of the step succeed, the step fails and names it
    insert_cell(project / 'nbs' / '03_train.ipynb', 'if region == "west": raise ValueError("no model for the west")', after='region = None')
    res = mlnb('run', 'evaluate_region', '--profile', 'ci', '--engine', 'fast', '--executor', 'dask', '--jobs', '2', cwd=project, check=False)
    assert res.returncode == 1, res.stderr  # data and features are cached: the four train_region items run
    failed = show(project, runs(project)[0]['id'])
    tr = items(failed, 'train_region')
    assert {n: s['status'] for n, s in tr.items()} == {**{f'train_region[region={r}]': 'ok' for r in REGIONS[:3]}, 'train_region[region=west]': 'failed'}
    west = tr['train_region[region=west]']
    assert west['error']['ename'] == 'ValueError' and Path(west['notebook']).name == 'train_region[region=west].ipynb'
    assert "Step 'train_region': 1 of 4 items did not succeed (allow_failures = 0), so the step failed" in res.stderr
    assert "train_region[region=west] failed: Step 'train_region[region=west]' failed in cell" in res.stderr and west['notebook'] in res.stderr
    assert {s['step']: s['status'] for s in failed['steps']}['evaluate_region'] == 'skipped'
    assert 'Traceback' not in res.stderr
    ledger_is_consistent(project)


def test_grid_items_and_a_changed_value(tmp_path):
    root = tiny(tmp_path / 'grid', '[tool.mlnb.steps.fit]\nnotebook = "nbs/fit.ipynb"\ngrid = { depth = [4, 8], trees = [100, 300] }\n'
                                    '[tool.mlnb.steps.best]\nnotebook = "nbs/best.ipynb"\nneeds = ["fit"]\n',
                {'fit': ('depth = 2\ntrees = 10.0', 'import mlnb\nmlnb.record("score", depth * trees)'),
                 'best': ('upstream = None', 'import mlnb\nscores = mlnb.upstream("fit", upstream)\n'
                                             'mlnb.record("best", max(scores, key=lambda k: scores[k]["score"]))')})
    mlnb('run', '--engine', 'fast', cwd=root)
    first = show(root, runs(root)[0]['id'])
    fit = items(first, 'fit')
    assert sorted(fit) == ['fit[depth=4,trees=100.0]', 'fit[depth=4,trees=300.0]', 'fit[depth=8,trees=100.0]', 'fit[depth=8,trees=300.0]']
    assert all(s['status'] == 'ok' and Path(s['notebook']).is_file() for s in fit.values())
    assert fit['fit[depth=8,trees=300.0]']['params'] == {'depth': 8, 'trees': 300.0}  # typed by the notebook: float trees
    assert len(list((root / '.mlnb' / 'runs' / first['id']).glob('fit[[]*.ipynb'))) == 4
    assert {s['step']: s for s in first['steps']}['best']['outputs'] == {'best': 'depth=8,trees=300.0'}

    toml = root / 'pyproject.toml'
    toml.write_text(toml.read_text().replace('trees = [100, 300]', 'trees = [100, 500]'))
    mlnb('run', '--engine', 'fast', cwd=root)
    second = show(root, runs(root)[0]['id'])
    assert {n: s['status'] for n, s in items(second, 'fit').items()} == {
        'fit[depth=4,trees=100.0]': 'cached', 'fit[depth=8,trees=100.0]': 'cached', 'fit[depth=4,trees=500.0]': 'ok', 'fit[depth=8,trees=500.0]': 'ok'}
    assert {s['step']: s for s in second['steps']}['best'] ['outputs'] == {'best': 'depth=8,trees=500.0'}

    # item values are typed like any parameter, before anything runs
    toml.write_text(toml.read_text().replace('depth = [4, 8]', 'depth = [4, "deep"]'))
    res = mlnb('run', cwd=root, check=False)
    assert res.returncode == 2 and "Step 'fit' grid 'depth' expects int (its declared default is 2); got str 'deep'" in res.stderr
    assert len(runs(root)) == 2


def test_a_killed_dask_worker_is_retried_and_the_ledger_stays_consistent(tmp_path):
    """Dask reschedules the item of a worker that died on another worker (the scheduler's allowed-failures);
    the run completes, the ledger stays consistent and the next run is all cached."""
    marks = tmp_path / 'marks'
    marks.mkdir()
    shared = tmp_path / 'shared'  # the artifact store every worker reaches, named by an fsspec URL
    root = tiny(tmp_path / 'kill', f'[tool.mlnb]\nexecutor = "dask"\nengine = "fast"\nartifacts = "file://{shared}"\n[tool.mlnb.dask]\nworkers = 2\n'
                                   '[tool.mlnb.steps.slow]\nnotebook = "nbs/slow.ipynb"\nforeach = { n = [1, 2, 3, 4] }\n',
                {'slow': (f'n = 0\nmarks = "{marks}"',
                          'import os, time, mlnb, pandas as pd\n'
                          'with open(f"{marks}/{n}.pids", "a") as f: f.write(f"{os.getppid()}\\n")\n'
                          'time.sleep(4)\nmlnb.record("n", n)\nmlnb.record("frame", pd.DataFrame({"n": [n]}))')})
    proc = subprocess.Popen([MLNB, 'run'], cwd=root,  # executor, workers and engine from [tool.mlnb]
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(marks.glob('*.pids')):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        victim_file = sorted(marks.glob('*.pids'))[0]
        worker = int(victim_file.read_text().split()[0])  # the Dask worker process that runs this item's notebook
        assert worker != proc.pid
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 0, err
    run = show(root, runs(root)[0]['id'])
    assert {n: s['status'] for n, s in items(run, 'slow').items()} == {f'slow[n={i}]': 'ok' for i in range(1, 5)}
    pids = victim_file.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1], pids  # started again, by another worker process
    assert run['executor'] == 'dask' and run['engine'] == 'fast'
    assert len(list(shared.rglob('*.parquet'))) == 4 and not (root / '.mlnb' / 'artifacts').exists()
    ledger_is_consistent(root)
    res = mlnb('run', '--executor', 'dask', '--jobs', '2', '--engine', 'fast', cwd=root)
    assert 'items: 4 cached' in res.stdout


def test_one_champion_per_segment(project, fresh_store):
    "A worse model for one region is not promoted and leaves the other regions' champions alone; promote and rollback per segment."
    toml = project / 'pyproject.toml'
    toml.write_text(toml.read_text().replace('floor = 0.7\n', ''))
    insert_cell(project / 'nbs' / '03_train.ipynb',
                'import os\nif region in os.environ.get("BROKEN_REGIONS", "").split(","):  # labels shuffled: a model no better than chance\n'
                '    model = fit(train_df.assign(churned=train_df["churned"].sample(frac=1, random_state=0).to_numpy()),\n'
                '                n_estimators=n_estimators, max_depth=max_depth, seed=seed)', after='train_roc_auc = roc_auc_score')
    run_args = ('run', 'evaluate_region', '--profile', 'ci', '--engine', 'fast', '--jobs', '2', '--force')
    mlnb(*run_args, cwd=project, env={'BROKEN_REGIONS': ','.join(REGIONS)})
    weak = {m['segment']: m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=project).stdout) if m['champion']}
    assert sorted(weak) == REGIONS

    res = mlnb(*run_args, cwd=project, env={'BROKEN_REGIONS': 'north'})
    models = json.loads(mlnb('models', 'churn', '--json', cwd=project).stdout)
    champs = {m['segment']: m['tag'] for m in models if m['champion']}
    assert champs['north'] == weak['north']  # the worse model was declined
    assert all(champs[r] != weak[r] for r in REGIONS if r != 'north')  # the others were promoted
    assert 'now the champion of segment south' in res.stdout
    gates = {g['segment']: g['status'] for g in show(project, runs(project)[0]['id'])['gates']}
    assert gates == {'east': 'applied', 'north': 'declined', 'south': 'applied', 'west': 'applied'}
    north = json.loads(mlnb('models', 'churn', '--segment', 'north', '--json', cwd=project).stdout)
    assert len(north) == 2 and {m['segment'] for m in north} == {'north'}

    # rollback and promote move one segment's pointer only
    assert weak['south'] in mlnb('rollback', 'churn', '--segment', 'south', cwd=project).stdout
    new_north = next(m['tag'] for m in north if not m['champion'])
    assert 'is now the champion of segment north' in mlnb('promote', new_north, cwd=project).stdout
    after = {m['segment']: m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=project).stdout) if m['champion']}
    assert after == {**champs, 'south': weak['south'], 'north': new_north}
    hist = json.loads(mlnb('history', 'churn', '--segment', 'south', '--json', cwd=project).stdout)
    assert [h['kind'] for h in hist] == ['gate', 'gate', 'rollback']
    res = mlnb('rollback', 'churn', cwd=project, check=False)
    assert res.returncode == 2 and 'Its segments: east, north, south, west (pass --segment)' in res.stderr

    from mlnb.champions import champions  # the ledger alone: what a per-segment Bento is built from
    assert champions('churn', project) == after
    lin = json.loads(mlnb('lineage', after['east'], '--json', cwd=project).stdout)
    assert lin['model']['segment'] == 'east' and lin['step']['params']['region'] == 'east'

    # one Bento holds every segment's champion and routes each row by its region; verify replays each segment's golden rows
    from mlnb.server import Server
    toml.write_text(toml.read_text().replace('[tool.mlnb.serve]\n', '[tool.mlnb.serve]\nsegment_by = "region"\n'))
    bento = mlnb('build', cwd=project).stdout.split()[1].rstrip('.')
    checked = json.loads(mlnb('verify', '--json', cwd=project).stdout)
    assert checked['models'] == after and checked['rows'] == 20 * len(REGIONS), checked
    row = json.loads(model_metadata(after['east'], project)['golden'])['rows'][0]
    with Server(bento, log_path=project / 'predictions.jsonl') as srv:
        assert httpx.get(srv.url + '/metadata').json()['segments']['by'] == 'region'
        (east,) = httpx.post(srv.url + '/predict', json={'rows': [row]}).json()
        assert east['model'] == after['east'], east
        r = httpx.post(srv.url + '/predict', json={'rows': [{**row, 'region': 'mars'}]})
        assert r.status_code == 400 and 'region' in r.text and all(x in r.text for x in REGIONS), r.text
