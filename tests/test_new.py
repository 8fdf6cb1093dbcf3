"""`mlnb new`: the scaffold is a working nbdev 3 project whose notebooks run in a real Jupyter kernel."""
import json, tomllib

import pandas as pd

from conftest import git_snapshot, mlnb, run

STEPS = ['data', 'features', 'train', 'evaluate']
OPTIONAL = ['train_region', 'evaluate_region']  # the per-region steps, run only when named


def test_layout(scaffold_template):
    root = scaffold_template
    for rel in ['pyproject.toml', '.gitignore', '.github/workflows/mlnb.yml', 'contracts', 'README.md',
                'nbs/00_index.ipynb', 'nbs/01_data.ipynb', 'nbs/02_features.ipynb', 'nbs/03_train.ipynb',
                'nbs/04_evaluate.ipynb', 'churn/__init__.py', 'churn/data.py', 'churn/features.py',
                'contracts/customers.yaml']:
        assert (root / rel).exists(), rel
    cfg = tomllib.loads((root / 'pyproject.toml').read_text())
    assert cfg['tool']['nbdev']['lib_path'] == 'churn'
    assert list(cfg['tool']['mlnb']['steps']) == STEPS + OPTIONAL
    assert all(cfg['tool']['mlnb']['steps'][s]['optional'] for s in OPTIONAL)
    assert '.mlnb/' in (root / '.gitignore').read_text().splitlines()
    assert not (root / 'settings.ini').exists()
    df = pd.read_csv(root / 'data' / 'customers.csv')
    assert len(df) == 5000 and 'churned' in df and df.isna().any().sum() >= 2
    assert set(df['churned'].unique()) == {0, 1}


def test_export_and_clean_change_nothing(project):
    git_snapshot(project)
    run(['nbdev-export'], project)
    run(['nbdev-clean'], project)
    assert run(['git', 'status', '--porcelain'], project).stdout == ''


def test_nbdev_test_passes(project):
    res = run(['nbdev-test'], project)
    assert 'Success' in res.stdout


def test_each_notebook_runs_in_a_kernel(project):
    "papermill with the default kernel runs every notebook top to bottom, upstream outputs injected as in a pipeline."
    import papermill as pm
    from mlnb import read
    from mlnb.outputs import read_refs
    out_dir = project / '.mlnb' / 'manual'
    out_dir.mkdir(parents=True)
    needs = {'data': [], 'features': ['data'], 'train': ['data', 'features'], 'evaluate': ['data', 'train']}
    nbs = {'index': '00_index', 'data': '01_data', 'features': '02_features', 'train': '03_train', 'evaluate': '04_evaluate'}
    outputs = {}
    env_path = str(project)
    import os
    old = os.environ.get('PYTHONPATH')
    os.environ['PYTHONPATH'] = env_path
    try:
        for step, stem in nbs.items():
            params = {'upstream': {n: outputs[n] for n in needs[step]}} if needs.get(step) else {}
            out = out_dir / f'{step}.ipynb'
            pm.execute_notebook(str(project / 'nbs' / f'{stem}.ipynb'), str(out), parameters=params,
                                kernel_name='python3', cwd=str(project / 'nbs'), progress_bar=False)
            outputs[step] = read_refs(out)  # references, as the runner injects them
            if step == 'data':  # `mlnb.read` gives the values
                values = read(out)
                assert len(values['train']) + len(values['test']) == values['n_rows'] == 5000
    finally:
        if old is None: os.environ.pop('PYTHONPATH')
        else: os.environ['PYTHONPATH'] = old
    assert {'train', 'test', 'n_rows'} <= set(outputs['data'])
    assert outputs['data']['n_rows'] == 5000
    assert 'model' in outputs['train']
    assert 0.65 < outputs['evaluate']['roc_auc'] <= 1.0


def test_refuses_non_empty_folder(tmp_path):
    target = tmp_path / 'busy'
    target.mkdir()
    (target / 'notes.txt').write_text('mine')
    res = mlnb('new', target, cwd=tmp_path, check=False)
    assert res.returncode == 2
    assert 'not empty' in res.stderr and '--force' in res.stderr
    assert (target / 'notes.txt').read_text() == 'mine' and not (target / 'pyproject.toml').exists()


def test_force_writes_into_non_empty_folder(tmp_path):
    target = tmp_path / 'busy'
    target.mkdir()
    (target / 'notes.txt').write_text('mine')
    mlnb('new', target, '--force', '--name', 'busy_model', cwd=tmp_path)
    assert (target / 'notes.txt').read_text() == 'mine'
    assert (target / 'busy_model' / 'features.py').exists()


def test_refuses_invalid_package_name(tmp_path):
    res = mlnb('new', tmp_path / 'x', '--name', 'my-churn', cwd=tmp_path, check=False)
    assert res.returncode == 2
    assert "'my-churn' is not a valid Python package name" in res.stderr and '--name my_churn' in res.stderr
    assert not (tmp_path / 'x').exists()


def test_steps_json(scaffold_template):
    res = mlnb('steps', '--json', cwd=scaffold_template / 'nbs')
    data = json.loads(res.stdout)
    assert [d['step'] for d in data] == STEPS + OPTIONAL
    assert [d['optional'] for d in data] == [False] * 4 + [True] * 2 and data[4]['foreach'] == {'region': 'data.segments'}
    assert data[2]['params'] == {'n_estimators': 200} and data[2]['needs'] == ['data', 'features']


def test_version_and_help(tmp_path):
    assert mlnb('--version', cwd=tmp_path).stdout.startswith('mlnb, version ')
    assert 'new' in mlnb('--help', cwd=tmp_path).stdout
