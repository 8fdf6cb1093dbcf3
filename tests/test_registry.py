"""The model registry and promotion gate: real BentoML model store (temporary BENTOML_HOME), real runs."""
import hashlib, json, sqlite3, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from conftest import MLNB, git_snapshot, mlnb, model_metadata, run

WORSE = ['-p', 'n_estimators=3', '-p', 'max_depth=2']


def models(project):
    return json.loads(mlnb('models', 'churn', '--json', cwd=project).stdout)


def champion(project):
    return [m['tag'] for m in models(project) if m['champion']]


def test_gate_promotes_only_better_models_and_rollback(project, fresh_store):
    first = mlnb('run', '--engine', 'fast', cwd=project)
    assert 'no champion yet: promoted (now the champion)' in first.stdout
    (good,) = champion(project)

    second = mlnb('run', '--engine', 'fast', *WORSE, cwd=project)
    assert 'not promoted' in second.stdout and 'vs champion' in second.stdout
    ms = models(project)
    assert len(ms) == 2 and champion(project) == [good]
    worse = next(m['tag'] for m in ms if m['tag'] != good)
    # `mlnb models` shows what the gate scored each version on (every metric evaluate passed), and its training metrics
    by_tag = {m['tag']: m for m in ms}
    for tag, status in ((good, 'applied'), (worse, 'declined')):
        assert set(by_tag[tag]['evaluation_metrics']) == {'roc_auc', 'accuracy', 'f1', 'log_loss'}
        assert set(by_tag[tag]['training_metrics']) == {'train_roc_auc'} and by_tag[tag]['gate']['status'] == status
    assert by_tag[good]['evaluation_metrics']['roc_auc'] > by_tag[worse]['evaluation_metrics']['roc_auc']
    table = mlnb('models', 'churn', cwd=project).stdout
    assert 'evaluation' in table and 'accuracy=' in table and 'train_roc_auc=' in table

    # BentoML itself lists both versions, with the metadata mlnb saved
    listed = json.loads(run([str(Path(sys.executable).parent / 'bentoml'), 'models', 'list', 'churn', '-o', 'json'], project).stdout)
    assert {m['tag'] for m in listed} == {good, worse}
    got = json.loads(run([str(Path(sys.executable).parent / 'bentoml'), 'models', 'get', worse, '-o', 'json'], project).stdout)
    assert got['metadata']['mlnb_run'] and json.loads(got['metadata']['lineage'])['params'] == {'max_depth': 2, 'n_estimators': 3, 'seed': 42, 'warm_start': False, 'new_trees': 50, 'max_trees': 500, 'region': None}

    # the gate decisions are in the ledger with their reasons
    db = sqlite3.connect(project / '.mlnb' / 'ledger.db')
    rows = db.execute('select candidate, promote, applied, reason from gates order by seq').fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(good, 1, 1), (worse, 0, 0)]
    assert 'not promoted' in rows[1][3]

    # by hand: promote the worse one, then roll back
    out = mlnb('promote', worse, '--reason', 'canary test', cwd=project).stdout
    assert f'{worse} is now the champion (was {good})' in out
    assert champion(project) == [worse]
    hist = db.execute('select tag, previous, kind, by, reason from champions order by seq').fetchall()
    assert hist[-1][:3] == (worse, good, 'manual') and hist[-1][3] and hist[-1][4] == 'canary test'
    assert f'{good} is the champion' in mlnb('rollback', 'churn', cwd=project).stdout
    assert champion(project) == [good]
    res = mlnb('rollback', 'churn', cwd=project, check=False)
    assert res.returncode == 2 and 'no earlier champion' in res.stderr
    assert champion(project) == [good]

    # every change of the pointer, oldest first
    hist = json.loads(mlnb('history', 'churn', '--json', cwd=project).stdout)
    assert [(h['kind'], h['previous'], h['tag']) for h in hist] == [('gate', None, good), ('manual', good, worse), ('rollback', worse, good)]
    assert hist[0]['run_id'] == ms[-1]['run_id'] and hist[1]['reason'] == 'canary test' and all(h['by'] and h['at'] for h in hist)
    text = mlnb('history', 'churn', cwd=project).stdout
    assert 'rollback' in text and 'canary test' in text and worse in text


def test_failed_run_never_changes_the_champion(project, fresh_store):
    mlnb('run', '--engine', 'fast', *WORSE, cwd=project)
    (weak,) = champion(project)
    # a better model is trained and passes the gate, but a later cell of the run fails
    nb_path = project / 'nbs' / '04_evaluate.ipynb'
    nb = nbformat.read(nb_path, 4)
    nb.cells.append(nbformat.v4.new_code_cell('#| notest\nraise RuntimeError("report upload failed")'))
    nbformat.write(nb, nb_path)
    res = mlnb('run', '--engine', 'fast', cwd=project, check=False)
    assert res.returncode == 1 and 'report upload failed' in res.stderr
    assert 'but the run did not succeed, so nothing was promoted and the champion is unchanged' in res.stdout
    assert champion(project) == [weak]
    assert len(models(project)) == 2  # registered all the same
    # a blocked run (bad data stops the data step) changes nothing either
    csv = project / 'data' / 'customers.csv'
    csv.write_text(csv.read_text().replace('month-to-month', 'monthly', 3))
    res = mlnb('run', '--engine', 'fast', '-p', 'seed=1', cwd=project, check=False)
    assert res.returncode == 1 and "Step 'data' failed" in res.stderr
    assert champion(project) == [weak] and len(models(project)) == 2


def test_concurrent_promotions_keep_the_pointer_whole(project, fresh_store):
    mlnb('run', '--engine', 'fast', cwd=project)
    mlnb('run', '--engine', 'fast', *WORSE, cwd=project)
    tags = [m['tag'] for m in models(project)]
    procs = [subprocess.Popen([MLNB, 'promote', tags[i % 2], '--reason', f'race {i}'], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    db = sqlite3.connect(project / '.mlnb' / 'ledger.db')
    assert db.execute('pragma integrity_check').fetchone()[0] == 'ok'
    hist = db.execute('select tag, previous, reason from champions order by seq').fetchall()
    assert len(hist) == 9 and sorted(r[2] for r in hist[1:]) == sorted(f'race {i}' for i in range(8))
    for before, after in zip(hist, hist[1:]):
        assert after[1] == before[0], 'each change must name the champion it replaced'
    assert champion(project) == [hist[-1][0]]


def test_lineage_round_trip(project, fresh_store):
    git_snapshot(project)
    mlnb('run', '--profile', 'ci', '--engine', 'fast', cwd=project)
    (tag,) = champion(project)
    lin = json.loads(mlnb('lineage', tag, '--json', cwd=project).stdout)
    md = model_metadata(tag, project)
    saved = json.loads(md['lineage'])
    runs = json.loads(mlnb('runs', '--json', cwd=project).stdout)
    assert lin['run']['id'] == saved['run_id'] == runs[0]['id'] == md['mlnb_run']
    assert lin['step'] == {'name': 'train', 'params': {'max_depth': 8, 'n_estimators': 50, 'seed': 42, 'warm_start': False, 'new_trees': 50, 'max_trees': 500, 'region': None}, 'fingerprint': saved['fingerprint']}
    assert lin['model']['metrics'] == md['metrics'] and 'train_roc_auc' in md['metrics']
    head = run(['git', 'rev-parse', 'HEAD'], project).stdout.strip()
    assert lin['code']['git_commit'] == head == lin['run']['git_commit']
    assert lin['code']['packages']['bentoml'] and lin['code']['packages']['scikit-learn']
    sha = hashlib.sha256((project / 'data' / 'customers.csv').read_bytes()).hexdigest()
    assert lin['data']['inputs'] == {'data/customers.csv': sha}
    assert lin['data']['contract'] == {'name': 'customers', 'sha256': hashlib.sha256((project / 'contracts' / 'customers.yaml').read_bytes()).hexdigest()}
    assert set(lin['data']['upstream_fingerprints']) == {'data', 'features'}
    steps = {s['step']: s for s in lin['upstream_steps']}
    assert set(steps) == {'data', 'features', 'train'}
    assert steps['data']['params'] == {'data_path': '../data/customers.csv', 'sample_frac': 0.2, 'seed': 42, 'test_size': 0.25,
                                       'source': 'csv', 'production_since': '30d'}
    assert lin['run']['engine'] == 'fast' and lin['gate']['status'] == 'applied' and 'roc_auc' in lin['gate']['metrics']
    for s in steps.values():
        assert Path(s['notebook']).is_file()
        assert s['fingerprint'] == (saved['fingerprint'] if s['step'] == 'train' else saved['upstream'][s['step']])
    golden = json.loads(md['golden'])
    assert lin['golden_examples'] == len(golden['rows']) == len(golden['predictions']) == len(golden['probabilities']) == 20
    assert 'churned' not in golden['rows'][0] and 'customer_id' in golden['rows'][0]
    text = mlnb('lineage', tag, cwd=project).stdout
    assert tag in text and 'data/customers.csv' in text and 'contract customers' in text and head in text


@pytest.mark.parametrize('args, bad', [
    (['lineage', 'bad tag!'], 'bad tag!'),
    (['lineage', 'churn'], 'churn'),
    (['promote', 'churn:x y'], 'churn:x y'),
    (['promote', 'Churn:v1'], 'Churn:v1'),
    (['models', 'x y'], 'x y'),
    (['models', 'churn:v1'], 'churn:v1'),
    (['rollback', 'a/b'], 'a/b'),
    (['history', 'bad name'], 'bad name'),
    (['build', '--model', 'bad:tag!'], 'bad:tag!'),
])
def test_invalid_tags_are_refused_with_the_form_expected(scaffold_template, args, bad):
    res = mlnb(*args, cwd=scaffold_template, check=False)
    assert res.returncode == 2, res.stderr
    assert f"Error: {bad!r}" in res.stderr and 'expected a model' in res.stderr, res.stderr
    assert ('name:version' in res.stderr) == (args[0] not in ('models', 'rollback', 'history')), res.stderr
    assert 'Traceback' not in res.stderr


def test_unknown_tag_and_bad_gate_settings(project, fresh_store):
    res = mlnb('promote', 'churn:doesnotexist', cwd=project, check=False)
    assert res.returncode == 2 and "There is no model 'churn:doesnotexist'" in res.stderr and 'Traceback' not in res.stderr
    toml = project / 'pyproject.toml'
    toml.write_text(toml.read_text().replace('min_improvement = 0.005', 'min_improvement = "two%"'))
    res = mlnb('run', cwd=project, check=False)
    assert res.returncode == 2 and "min_improvement = 'two%' cannot be used" in res.stderr and '"2%"' in res.stderr
    assert not (project / '.mlnb' / 'runs').exists()
