"""Warm start on the scaffolded churn project: `mlnb run -p warm_start=true` grows the champion's forest (its trees kept as they were) and the
model's lineage names the champion; with no champion the step says so and trains from scratch; a champion fitted on other columns stops the
step with the reason and the fix, and the champion stays."""
import json, shutil, sys

import numpy as np
import pytest

from conftest import mlnb, run
from test_loop import trained, write_log  # noqa: F401 (a fixture: the churn project with a loop table and a weak champion)


def models(root):
    return json.loads(mlnb('models', 'churn', '--json', cwd=root).stdout)


def train_output(root, run_id):
    "What the train step of run `run_id` printed."
    nb = json.loads((root / '.mlnb' / 'runs' / run_id / 'train.ipynb').read_text())
    return ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []) if o.get('name') == 'stdout')


def last_run(root):
    return json.loads(mlnb('runs', '--json', cwd=root).stdout)[0]


@pytest.fixture
def churn(scaffold_template, tmp_path, monkeypatch):
    "A copy of the scaffolded project whose package this process can import (for its feature function)."
    root = shutil.copytree(scaffold_template, tmp_path / 'churn', ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv('MLNB_PROJECT_ROOT', str(root))
    yield root
    for m in [m for m in sys.modules if m == 'churn' or m.startswith('churn.')]: del sys.modules[m]


def test_a_warm_started_run_grows_the_champions_forest(churn):
    root = churn
    # no champion yet: warm_start says so and trains from scratch (50 trees, the ci profile's n_estimators)
    mlnb('run', '--engine', 'fast', '--profile', 'ci', '-p', 'warm_start=true', cwd=root)
    first = last_run(root)['id']
    assert 'warm_start: there is no champion yet, so the forest is trained from scratch' in train_output(root, first)
    (champ,) = [m['tag'] for m in models(root) if m['champion']]
    assert json.loads(mlnb('lineage', champ, '--json', cwd=root).stdout)['warm_start_from'] is None
    # warm start: the champion's 50 trees and 10 new ones
    mlnb('run', '--engine', 'fast', '--profile', 'ci', '-p', 'warm_start=true', '-p', 'new_trees=10', cwd=root)
    second = last_run(root)['id']
    assert f'warm_start: growing the forest of champion {champ} (50 trees) by 10' in train_output(root, second)
    new = next(m['tag'] for m in models(root) if m['run_id'] == second)
    lin = json.loads(mlnb('lineage', new, '--json', cwd=root).stdout)
    assert lin['warm_start_from'] == champ and lin['step']['params']['warm_start'] is True
    assert f'warm-started from {champ}' in mlnb('lineage', new, cwd=root).stdout
    # the first trees are the champion's: the same splits, the same answers
    from mlnb.registry import load_model
    from churn.data import simulate
    from churn.features import prepare
    old, grown = load_model(champ), load_model(new)
    assert (len(old['forest'].estimators_), len(grown['forest'].estimators_)) == (50, 60)
    X = old['preprocess'].transform(prepare(simulate(300, seed=3)))
    assert np.array_equal(X, grown['preprocess'].transform(prepare(simulate(300, seed=3))))  # the preprocessor as the champion fitted it
    for a, b in zip(old['forest'].estimators_, grown['forest'].estimators_[:50]):
        assert np.array_equal(a.tree_.feature, b.tree_.feature) and np.array_equal(a.tree_.threshold, b.tree_.threshold)
        assert np.array_equal(a.predict_proba(X), b.predict_proba(X))


def test_a_champion_fitted_on_other_columns_stops_a_warm_start(churn):
    root = churn
    mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root)
    (champ,) = [m['tag'] for m in models(root) if m['champion']]
    # a champion promoted by hand, fitted without `age`: its trees cannot read this step's rows
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder
    from sklearn.compose import ColumnTransformer
    import mlnb as api
    rows = pd.DataFrame({'tenure_months': [1, 30, 5, 60], 'contract': ['month-to-month', 'two-year', 'month-to-month', 'one-year']})
    pre = ColumnTransformer([('num', 'passthrough', ['tenure_months']), ('cat', OrdinalEncoder(), ['contract'])])
    other = Pipeline([('preprocess', pre), ('forest', RandomForestClassifier(n_estimators=3, random_state=0))]).fit(rows, [1, 0, 1, 0])
    odd = api.log_model(other, 'churn')
    mlnb('promote', odd, cwd=root)
    res = mlnb('run', '--engine', 'fast', '--profile', 'ci', '-p', 'warm_start=true', cwd=root, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert f'The champion {odd} was fitted on other columns than this step trains on' in out and "'age'" in out, out
    assert 'Train from scratch this once (warm_start = False)' in out, out
    assert [m['tag'] for m in models(root) if m['champion']] == [odd]  # the champion stays
    assert champ != odd


def test_the_loop_retrains_from_the_champion(trained, tmp_path):
    "`retrain = { params = { source = \"production\", warm_start = true } }`: the loop's retraining run grows the champion (a stump) on production data."
    root = shutil.copytree(trained, tmp_path / 'churn', ignore=shutil.ignore_patterns('__pycache__'))
    toml = (root / 'pyproject.toml').read_text()
    (root / 'pyproject.toml').write_text(toml.replace('production_since = "1d" }', 'production_since = "1d", warm_start = true, new_trees = 20 }'))
    (champ,) = [m['tag'] for m in models(root) if m['champion']]
    write_log(root, {'champion': champ}, n=3000, seed=8)
    assert ' -p warm_start=true -p new_trees=20' in mlnb('loop', '--dry-run', cwd=root).stdout
    done = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert done.get('run_id'), done
    assert f'warm_start: growing the forest of champion {champ} (1 trees) by 20' in train_output(root, done['run_id'])
    new = next(m['tag'] for m in models(root) if m['run_id'] == done['run_id'])
    lin = json.loads(mlnb('lineage', new, '--json', cwd=root).stdout)
    assert lin['warm_start_from'] == champ and lin['data']['windows'], lin
    from mlnb.registry import load_model
    assert len(load_model(new)['forest'].estimators_) == 21


def test_champion_model_fetches_the_champion_from_the_teams_store(tmp_path):
    "A machine whose BentoML store lacks the champion gets it from the team's artifact store (here a shared folder)."
    root = tmp_path / 'demo'
    root.mkdir()
    (root / 'pyproject.toml').write_text(f'[tool.nbdev]\nlib_path = "demo"\n[tool.mlnb]\nartifacts = "{tmp_path / "team"}"\n')
    train = ("import mlnb, pandas as pd; from sklearn.linear_model import LogisticRegression; from mlnb.registry import promote\n"
             "X = pd.DataFrame({'a': [0., 1, 2, 3], 'b': [1., 0, 1, 0]}); m = LogisticRegression().fit(X, [0, 0, 1, 1])\n"
             "promote(mlnb.log_model(m, 'demo')); print(m.coef_.tolist())")
    load = "import mlnb; m = mlnb.champion_model('demo'); print(m.coef_.tolist()); print(mlnb.champion('demo'))"
    py = lambda code, home: run([sys.executable, '-c', code], root, env={'BENTOML_HOME': str(tmp_path / home)}).stdout.splitlines()
    (coef,) = py(train, 'a')
    got, tag = py(load, 'b')  # machine B: an empty BentoML store
    assert got == coef and (tmp_path / 'b' / 'models' / 'demo' / tag.split(':')[1]).is_dir()
