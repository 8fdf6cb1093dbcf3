"""`mlnb run` on a scaffolded project: real papermill executions, a real SQLite ledger, real processes."""
import json, os, re, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from conftest import MLNB, mlnb, run

STEPS = ['data', 'features', 'train', 'evaluate']


def runs(root):
    return json.loads(mlnb('runs', '--json', cwd=root).stdout)


def show(root, run_id):
    return json.loads(mlnb('show', run_id, '--json', cwd=root).stdout)


def statuses(root, run_id):
    return {s['step']: s['status'] for s in show(root, run_id)['steps']}


def insert_cell(nb_path, source, after_tag='parameters'):
    "Insert a code cell right after the cell tagged `after_tag`."
    nb = nbformat.read(nb_path, 4)
    i = next(i for i, c in enumerate(nb.cells) if after_tag in c.metadata.get('tags', []))
    cell = nbformat.v4.new_code_cell(source)
    nb.cells.insert(i + 1, cell)
    nbformat.write(nb, nb_path)


TRAIN_DEFAULTS = {'max_depth': 8, 'n_estimators': 200, 'seed': 42, 'warm_start': False, 'new_trees': 50, 'max_trees': 500, 'region': None}
DATA_DEFAULTS = {'data_path': '../data/customers.csv', 'sample_frac': 1.0, 'seed': 42, 'test_size': 0.25, 'source': 'csv',
                 'production_since': '30d'}


def test_run_record_cache_and_partial_rerun(project):
    res = mlnb('run', cwd=project)
    assert 'ok: 4 ok.' in res.stdout
    # stderr (not a terminal) holds mlnb's own lines only; the kernels' own logs are kept beside the executed notebooks
    assert res.stderr and all(line.startswith('mlnb:') for line in res.stderr.splitlines()), res.stderr
    first = runs(project)[0]
    assert first['status'] == 'ok' and first['steps'] == {'ok': 4} and first['engine'] == 'kernel'
    logs = {p.name: p.read_text() for p in (project / '.mlnb' / 'runs' / first['id']).glob('*.kernel.log')}
    assert set(logs) == {f'{s}.kernel.log' for s in STEPS}
    assert 'Kernel is running over TCP without encryption' in logs['data.kernel.log']
    detail = show(project, first['id'])
    steps = {s['step']: s for s in detail['steps']}
    assert detail['python'] and detail['packages']['papermill'] and detail['packages']['mlnb']
    for name in STEPS:
        nb = Path(steps[name]['notebook'])
        assert nb == project / '.mlnb' / 'runs' / first['id'] / f'{name}.ipynb' and nb.is_file()
        assert steps[name]['fingerprint'] and steps[name]['duration'] > 0
    assert steps['train']['params'] == TRAIN_DEFAULTS  # resolved: the notebook's defaults and the step's params
    assert steps['data']['params'] == DATA_DEFAULTS and steps['evaluate']['params'] == {'region': None, 'train_step': 'train'}
    injected = [c for c in nbformat.read(steps['train']['notebook'], 4).cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert 'n_estimators = 200' in injected[0].source and 'upstream' in injected[0].source
    assert 'max_depth = 8' not in injected[0].source  # only what differs from the notebook's defaults is injected
    assert '"params": {"n_estimators": 200, "max_depth": 8, "seed": 42, "warm_start": False, "new_trees": 50, "max_trees": 500, "region": None}' in injected[0].source  # the context has them all
    assert 0.7 < steps['evaluate']['outputs']['roc_auc'] < 1

    # nothing changed: everything cached
    mlnb('run', cwd=project)
    assert set(statuses(project, runs(project)[0]['id']).values()) == {'cached'}

    # markdown-only and output-only edits keep the cache
    nb_path = project / 'nbs' / '03_train.ipynb'
    nb = nbformat.read(nb_path, 4)
    nb.cells.append(nbformat.v4.new_markdown_cell('A note that changes nothing.'))
    nb.cells[1].outputs = [nbformat.v4.new_output('stream', text='stale output\n')] if nb.cells[1].cell_type == 'code' else []
    nbformat.write(nb, nb_path)
    mlnb('run', cwd=project)
    assert set(statuses(project, runs(project)[0]['id']).values()) == {'cached'}

    # a parameter change re-runs that step and what follows, nothing upstream
    res = mlnb('run', '-p', 'n_estimators=60', cwd=project)
    last = runs(project)[0]['id']
    assert statuses(project, last) == {'data': 'cached', 'features': 'cached', 'train': 'ok', 'evaluate': 'ok'}
    assert {s['step']: s for s in show(project, last)['steps']}['train']['params'] == {**TRAIN_DEFAULTS, 'n_estimators': 60}

    # --force executes everything; named steps bring what they need
    mlnb('run', 'features', '--force', cwd=project)
    assert statuses(project, runs(project)[0]['id']) == {'data': 'ok', 'features': 'ok'}


def test_profile_and_typed_parameters(project):
    mlnb('run', 'data', '--profile', 'ci', '-p', 'seed=7', '--engine', 'fast', cwd=project)
    run = show(project, runs(project)[0]['id'])
    step = run['steps'][0]
    assert step['params'] == {**DATA_DEFAULTS, 'sample_frac': 0.2, 'seed': 7} and run['engine'] == 'fast'
    assert step['outputs']['n_rows'] == 1000


@pytest.mark.parametrize('args, expected', [
    (['-p', 'n_estimator=3'], "No step declares a parameter 'n_estimator' (-p n_estimator=3). Did you mean 'n_estimators'?"),
    (['-p', 'n_estimators=many'], "Step 'train' parameter 'n_estimators' (-p n_estimators=many) expects int (its declared default is 200); 'many' is not a int."),
    (['-p', 'sample_frac=tiny'], "Step 'data' parameter 'sample_frac' (-p sample_frac=tiny) expects float"),
    (['-p', 'train.n_estimators'], "has no value"),
    (['-p', 'import os; x=1'], "is not a Python identifier"),
    (['-p', 'upstream={}'], "filled by the runner"),
    (['trian'], "There is no step 'trian'. Did you mean 'train'?"),
    (['--profile', 'cii'], "There is no profile 'cii'. Did you mean 'ci'?"),
    (['--engine', 'warp'], "There is no engine 'warp'"),
    (['-p', 'test_size=nan'], "Step 'data' parameter 'test_size' (-p test_size=nan): nan is not a finite number."),
    (['-p', 'data.test_size=1e400'], "(-p data.test_size=1e400): inf is not a finite number."),
    (['-p', 'sample_frac=-inf'], "-inf is not a finite number"),
    (['--profile', 'broken'], "Step 'data' parameter 'sample_frac' (profile broken): nan is not a finite number."),
])
def test_bad_requests_are_refused_before_anything_runs(project, args, expected):
    with open(project / 'pyproject.toml', 'a') as f: f.write('\n[tool.mlnb.profiles.broken]\nparams = { sample_frac = nan }\n')
    res = mlnb('run', *args, cwd=project, check=False)
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr
    assert not (project / '.mlnb' / 'runs').exists()


def test_injection_attempts_execute_nothing(project):
    canary = project / 'PWNED'
    attempts = [
        f'data_path=x"; open("{canary}", "w")#',
        f"data_path=x'\nopen('{canary}', 'w')\n'",
        f'data_path=__import__("os").system("touch {canary}")',
        'data_path=\\',
    ]
    for a in attempts:
        res = mlnb('run', 'data', '-p', a, '--engine', 'fast', cwd=project, check=False)
        # the value lands as a plain string: the data step fails to find such a file, and nothing else runs
        assert res.returncode == 1, res.stderr
        assert 'FileNotFoundError' in res.stderr
        value = show(project, runs(project)[0]['id'])['steps'][0]['params']['data_path']
        assert value == a.split('=', 1)[1]
    res = mlnb('run', '-p', f'seed=__import__("os").system("touch {canary}")', cwd=project, check=False)
    assert res.returncode == 2 and 'expects int' in res.stderr
    assert not canary.exists()

    # through the Python API, a Path (not plain data) never reaches a notebook
    from dataclasses import replace
    from types import MappingProxyType
    from mlnb.errors import PipelineError
    from mlnb.pipeline import make_plan
    from mlnb.project import load_project
    p = load_project(project)
    steps = dict(p.steps)
    steps['data'] = replace(steps['data'], params={'data_path': Path('/etc/passwd')})
    with pytest.raises(PipelineError, match='a PosixPath .* is not plain data'):
        make_plan(replace(p, steps=MappingProxyType(steps)))


def test_failing_step_reports_and_resumes(project):
    nb_path = project / 'nbs' / '02_features.ipynb'
    insert_cell(nb_path, 'raise ValueError("feature table is broken")')
    res = mlnb('run', cwd=project, check=False)
    assert res.returncode == 1
    failed = runs(project)[0]
    assert failed['status'] == 'failed'
    st = statuses(project, failed['id'])
    assert st == {'data': 'ok', 'features': 'failed', 'train': 'skipped', 'evaluate': 'skipped'}
    nb_out = project / '.mlnb' / 'runs' / failed['id'] / 'features.ipynb'
    assert "Step 'features' failed in cell [" in res.stderr
    assert 'ValueError: feature table is broken' in res.stderr and str(nb_out) in res.stderr
    assert f"The kernel's own log (its stderr: warnings, crashes) is at {nb_out.with_suffix('.kernel.log')}" in res.stderr
    executed = nbformat.read(nb_out, 4)
    assert any(o.get('ename') == 'ValueError' for c in executed.cells if c.cell_type == 'code' for o in c.outputs)

    # fix the notebook: only the failed step and what follows run again
    nb = nbformat.read(nb_path, 4)
    nb.cells = [c for c in nb.cells if 'feature table is broken' not in c.source]
    nbformat.write(nb, nb_path)
    mlnb('run', cwd=project)
    assert statuses(project, runs(project)[0]['id']) == {'data': 'cached', 'features': 'ok', 'train': 'ok', 'evaluate': 'ok'}


def test_hand_run_reads_latest_successful_upstream(project):
    "A notebook run by hand (no injected upstream) reads the ledger, like JupyterLab does."
    mlnb('run', 'data', 'features', '--engine', 'fast', cwd=project)
    out = project / 'by_hand.ipynb'
    run([sys.executable, '-m', 'papermill', 'nbs/02_features.ipynb', str(out), '--cwd', 'nbs'], project,
        env={'PYTHONPATH': str(project)})
    from mlnb import read
    assert read(out)['n_features'] > 5


def test_concurrent_runs_both_finish(project):
    cmd = [MLNB, 'run', '--force', '--engine', 'fast']
    procs = [subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert 'locked' not in err and 'Traceback' not in err
    rs = runs(project)
    assert len(rs) == 2 and all(r['status'] == 'ok' and r['steps'] == {'ok': 4} for r in rs)
    import sqlite3
    db = sqlite3.connect(project / '.mlnb' / 'ledger.db')
    assert db.execute('pragma integrity_check').fetchone()[0] == 'ok'
    assert db.execute('pragma journal_mode').fetchone()[0] == 'wal'


def test_killed_run_is_not_reused(project):
    # make the train step slow enough to be killed in the middle
    insert_cell(project / 'nbs' / '03_train.ipynb', 'import time; time.sleep(30)')
    proc = subprocess.Popen([MLNB, 'run'], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        rs = runs(project) if (project / '.mlnb' / 'ledger.db').exists() else []
        if rs and statuses(project, rs[0]['id']).get('train') == 'running': break
        time.sleep(0.5)
    else:
        proc.kill(); pytest.fail('the train step never started')
    time.sleep(2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = runs(project)[0]
    assert killed['status'] == 'killed'
    assert statuses(project, killed['id'])['train'] == 'killed'
    # the next run completes and executes train again (nothing of the killed step is reused)
    nb = nbformat.read(project / 'nbs' / '03_train.ipynb', 4)
    nb.cells = [c for c in nb.cells if 'time.sleep(30)' not in c.source]
    nbformat.write(nb, project / 'nbs' / '03_train.ipynb')
    mlnb('run', cwd=project)
    assert statuses(project, runs(project)[0]['id']) == {'data': 'cached', 'features': 'cached', 'train': 'ok', 'evaluate': 'ok'}
    assert runs(project)[1]['status'] == 'killed'
    try: os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError: pass


def _cell_outputs(nb_path):
    "Per code cell: the stream text, results and scraps, without timings or tracebacks."
    out = []
    for c in nbformat.read(nb_path, 4).cells:
        if c.cell_type != 'code' or 'injected-parameters' in c.metadata.get('tags', []): continue  # holds the run id
        items = []
        for o in c.outputs:
            if o.output_type == 'stream': items.append((o.name, re.sub(r'churn:[a-z0-9]+', 'churn:<tag>', o.text)))
            elif o.output_type == 'execute_result': items.append(('result', o.data.get('text/plain')))
            elif o.output_type == 'display_data': items.append(('display', sorted(o.data)))
        out.append((c.source, sorted(items, key=str)))
    return out


def test_fast_engine_matches_kernel_engine(project, tmp_path):
    "From the same state (a fresh project and model store each), both engines write the same notebooks and outputs."
    import shutil
    results = {}
    for engine in ('kernel', 'fast'):
        root = tmp_path / engine
        shutil.copytree(project, root)
        env = {'BENTOML_HOME': str(tmp_path / f'bentoml-{engine}')}
        mlnb('run', '--engine', engine, cwd=root, env=env)
        rid = runs(root)[0]['id']
        results[engine] = {s['step']: s for s in show(root, rid)['steps']}
    for step in STEPS:
        k, f = results['kernel'][step], results['fast'][step]
        # each store gives its model its own version tag; everything else must be identical
        drop = lambda o: {n: v for n, v in o.items() if n not in ('model_tag', 'gate')}
        assert drop(k['outputs']) == drop(f['outputs']), step
        if 'gate' in k['outputs']:
            same = lambda g: {n: v for n, v in g.items() if n not in ('candidate', 'reason')}
            assert same(k['outputs']['gate']) == same(f['outputs']['gate'])
        assert _cell_outputs(k['notebook']) == _cell_outputs(f['notebook']), step


def test_independent_steps_run_in_parallel(tmp_path):
    root = tmp_path / 'par'
    (root / 'nbs').mkdir(parents=True)
    for name in ('a', 'b'):
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell('pause = 3.0', metadata={'tags': ['parameters']}),
            nbformat.v4.new_code_cell('import time, mlnb\ntime.sleep(pause)\nmlnb.record("done", True)')])
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(nb, root / 'nbs' / f'{name}.ipynb')
    (root / 'pyproject.toml').write_text('[project]\nname = "par"\n[tool.nbdev]\nlib_path = "par"\n'
                                         '[tool.mlnb.steps.a]\nnotebook = "nbs/a.ipynb"\n[tool.mlnb.steps.b]\nnotebook = "nbs/b.ipynb"\n')
    mlnb('run', '--jobs', '2', '--engine', 'fast', cwd=root)
    steps = show(root, runs(root)[0]['id'])['steps']
    a, b = steps
    assert a['started'] < b['ended'] and b['started'] < a['ended'], 'the two steps did not overlap'
