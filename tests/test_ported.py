"""mlnb beyond the churn scaffold: a multiclass classifier (wine) and a regressor (diabetes), ported from `mlnb new`.

Each test runs once per project of tests/projects/ (the `ported` fixtures): real nbdev, real papermill
kernels, the real gate and BentoML model store.
"""
import json

import pandas as pd
import yaml

from conftest import git_snapshot, mlnb, model_metadata, run
from projects import PROJECTS, SOURCE

import mlnb as mlnb_api


def spec(root):
    return PROJECTS[root.name]


def models(root, name):
    return json.loads(mlnb('models', name, '--json', cwd=root).stdout)


def latest_outputs(root, step):
    "What `step` recorded in the latest run."
    run_id = json.loads(mlnb('runs', '--json', cwd=root).stdout)[0]['id']
    return mlnb_api.read(root / '.mlnb' / 'runs' / run_id / f'{step}.ipynb')


def test_the_data_has_keys_timestamps_categories_and_gaps(ported_template):
    root, p = ported_template, spec(ported_template)
    df = pd.read_csv(root / p.csv)
    assert df[p.key].is_unique and df[p.key].notna().all()
    assert df.isna().any().sum() >= 3, 'some values are missing, in several columns'
    contract = yaml.safe_load((root / 'contracts' / f'{p.contract}.yaml').read_text())['columns']
    assert contract[p.key]['unique'] is True
    assert [c for c, d in contract.items() if d['dtype'].startswith('datetime64')], 'a timestamp column'
    categories = [c for c, d in contract.items() if 'isin' in d and c != p.label]
    assert categories and any(contract[c].get('nullable') for c in categories), 'a category column, with gaps'
    if p.kind == 'multiclass':
        assert df[p.label].nunique() == 3 and df[p.label].dtype != float
        assert len(contract[p.label]['isin']) == 3
    else:
        assert df[p.label].dtype == float and df[p.label].nunique() > 100
        assert 'bool' in {d['dtype'] for d in contract.values()}


def test_check_accepts_the_extract_and_names_a_broken_column(ported):
    p = spec(ported)
    ok = mlnb('check', p.csv, '--contract', p.contract, cwd=ported)
    assert 'meet contract' in ok.stdout
    df = pd.read_csv(ported / p.csv)
    df.loc[df.index[:3], p.key] = df[p.key].iloc[3]  # duplicated keys
    df.to_csv(ported / 'data' / 'broken.csv', index=False)
    bad = mlnb('check', 'data/broken.csv', '--contract', p.contract, '--json', cwd=ported, check=False)
    assert bad.returncode == 1
    assert p.key in {f['column'] for f in json.loads(bad.stdout)['failures']}


def test_nbdev_test_passes(ported):
    assert 'Success' in run(['nbdev-test'], ported).stdout


def test_the_source_is_clean_and_exported(ported):
    "The notebooks kept in tests/projects are as nbdev-clean leaves them, and export to the package the fixture made."
    (ported / '.gitignore').write_text('.mlnb/\n')  # the project's own ignores the made package, data and contract
    git_snapshot(ported)
    run(['nbdev-export'], ported)
    run(['nbdev-clean'], ported)
    assert run(['git', 'status', '--porcelain'], ported).stdout == ''
    for nb in (SOURCE / ported.name / 'nbs').glob('*.ipynb'):
        assert (ported / 'nbs' / nb.name).read_text() == nb.read_text(), nb.name
    for nb in (SOURCE / ported.name / 'nbs').glob('*.ipynb'):
        tags = [c.get('metadata', {}).get('tags', []) for c in json.loads(nb.read_text())['cells']]
        assert nb.name == '00_index.ipynb' or ['parameters'] in tags, f"{nb.name} has no cell tagged parameters"


def test_run_promotes_a_first_model_and_gates_a_worse_one(ported, fresh_store):
    p = spec(ported)
    first = mlnb('run', cwd=ported)
    assert 'no champion yet: promoted (now the champion)' in first.stdout
    (champion,) = [m['tag'] for m in models(ported, p.name) if m['champion']]
    golden = json.loads(model_metadata(champion, ported)['golden'])
    assert len(golden['rows']) == 20 and p.label not in golden['rows'][0]
    if p.kind == 'multiclass':
        assert set(golden['predictions']) <= {'barolo', 'grignolino', 'barbera'}
        assert all(len(row) == 3 and abs(sum(row) - 1) < 1e-9 for row in golden['probabilities'])
    else:
        assert 'probabilities' not in golden and all(isinstance(v, float) for v in golden['predictions'])
        assert len(set(golden['predictions'])) > 10

    second = mlnb('run', *p.worse, cwd=ported)
    assert 'not promoted' in second.stdout and 'vs champion' in second.stdout
    ms = models(ported, p.name)
    assert len(ms) == 2 and [m['tag'] for m in ms if m['champion']] == [champion]
    out = latest_outputs(ported, 'evaluate')
    candidate, incumbent = out['metrics'][p.metric], out['champion_metrics'][p.metric]
    # worse in the gate's own direction: a lower macro F1, a higher RMSE
    assert (candidate < incumbent) if p.kind == 'multiclass' else (candidate > incumbent), (candidate, incumbent)


def readme_block(after):
    "The lines of the first ```sh block of the guide docs/bring-your-own-data.md after the text `after`."
    text = (SOURCE.parent.parent / 'docs' / 'bring-your-own-data.md').read_text()
    start = text.index('```sh', text.index(after)) + len('```sh')
    return [l.strip() for l in text[start:text.index('```', start)].splitlines() if l.strip()]


def test_bring_your_own_data_from_mlnb_new(tmp_path):
    "The walk-through of docs/bring-your-own-data.md: its table and its `mlnb new --data` command, then its commands to test, run, build and verify."
    make = readme_block('## 1. Make the project')
    assert make[1] == 'mlnb new cancer --data cancer.csv --label diagnosis --key "patient id"'
    res = run(['bash', '-euo', 'pipefail', '-c', ' && '.join(make)], tmp_path)
    assert '`malignant` (the rarer value)' in res.stdout and 'patient id' in res.stdout and 'mean radius' in res.stdout
    steps = readme_block('## 2. Test, run, serve')
    assert steps[0] == 'cd cancer'
    res = run(['bash', '-euo', 'pipefail', '-c', ' && '.join(steps)], tmp_path, env={'BENTOML_HOME': str(tmp_path / 'bentoml')})
    assert 'no champion yet: promoted' in res.stdout and 'exactly as the notebook did' in res.stdout
    assert [s['step'] for s in json.loads(mlnb('steps', '--json', cwd=tmp_path / 'cancer').stdout)] == ['data', 'features', 'train', 'evaluate']
