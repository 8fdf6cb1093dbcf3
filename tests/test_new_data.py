"""`mlnb new --data`: a working project for any table, with nothing to rewrite.

For each table of tests/tables.py (from packages that ship them), with no edit of any generated file: `mlnb new --data`,
`nbdev-test`, `mlnb run`, `mlnb build`, `mlnb verify`, the served answers on the held-out rows bit-identical to the
notebook's model in this process, and `mlnb monitor` on them without an alert. Then the refusals: bad tables before
anything is written, and settings that cannot fit the model at `mlnb build`. Real nbdev, papermill kernels, BentoML.
"""
import json, re, tomllib

import httpx
import pandas as pd
import pytest

from conftest import git_snapshot, mlnb, project_function, run
from tables import CASES, breast_cancer, penguins

import mlnb as mlnb_api


def latest(root, step, env):
    "What `step` recorded in the latest run."
    run_id = json.loads(mlnb('runs', '--json', cwd=root, env=env).stdout)[0]['id']
    return mlnb_api.read(root / '.mlnb' / 'runs' / run_id / f'{step}.ipynb')


@pytest.fixture(scope='module', params=list(CASES))
def made(request, tmp_path_factory):
    "A project made by `mlnb new --data` for one table, its notebooks tested, run, built and verified, with a model store of its own."
    case = CASES[request.param]
    folder = tmp_path_factory.mktemp(case.name)
    data = case.write(folder)
    env = {'BENTOML_HOME': str(folder / 'bentoml')}
    out = mlnb('new', case.name, '--data', data.name, '--label', case.label, *case.options, cwd=folder, env=env).stdout
    root = folder / case.name
    git_snapshot(root)
    steps = {'nbdev-test': run(['nbdev-test'], root).stdout,
             'run': mlnb('run', '--engine', 'fast', cwd=root, env=env).stdout,
             'build': mlnb('build', cwd=root, env=env).stdout,
             'verify': mlnb('verify', cwd=root, env=env).stdout}
    return case, root, env, out, steps


def test_the_project_is_made_for_the_table(made):
    case, root, env, out, steps = made
    problem = tomllib.loads((root / case.name / 'problem.toml').read_text())
    cfg = tomllib.loads((root / 'pyproject.toml').read_text())['tool']['mlnb']
    assert (problem['label'], problem['problem']) == (case.label, case.problem)
    assert problem['rows'] >= case.rows and (root / 'data' / case.file).read_bytes() == (root.parent / case.file).read_bytes()
    if case.classes: assert tuple(problem['classes']) == case.classes and problem['baseline']['label'] in case.classes
    else: assert 'classes' not in problem and isinstance(problem['baseline']['value'], float)
    assert cfg['gate']['metric'] == case.metric and cfg['serve']['label'] == case.label
    limits = cfg['monitor']['action_limits']
    assert set(limits) == ({'mean'} if case.problem == 'regression' else {str(problem['positive'])} if case.problem == 'binary'
                           else {str(c) for c in case.classes})
    segmented = '--segment' in case.options
    assert list(cfg['steps']) == ['data', 'features', 'train', 'evaluate'] + (['train_segment', 'evaluate_segment'] if segmented else [])
    # nothing left from churn: no simulator, no region, no churn words, in the notebooks, the settings or the README
    for f in [*(root / 'nbs').glob('*.ipynb'), root / 'pyproject.toml', root / 'README.md', *(root / case.name).glob('*.py')]:
        text = f.read_text().lower()
        assert not re.search(r'churn|customer|simulat|region', text), f.name
    # what mlnb new showed for review: the problem's facts and the contract, every column of the table in it
    assert f"The label: `{case.label}`" in out and 'The data contract' in out and f'{case.label} (label)' in out
    data = root / 'data' / case.file
    assert all(c in out for c in (pd.read_parquet(data) if data.suffix == '.parquet' else pd.read_csv(data, nrows=0)).columns)
    # the notebooks and the package agree, and nbdev-clean leaves the notebooks as they are
    run(['nbdev-export'], root)
    run(['nbdev-clean'], root)
    assert run(['git', 'status', '--porcelain'], root).stdout == ''


def test_the_pipeline_promotes_a_model_that_beats_the_baseline(made):
    case, root, env, out, steps = made
    assert 'Success' in steps['nbdev-test']
    assert 'no champion yet: promoted' in steps['run']
    assert 'exactly as the notebook did' in steps['verify']
    evaluated = latest(root, 'evaluate', env)
    floor = tomllib.loads((root / 'pyproject.toml').read_text())['tool']['mlnb']['gate']['floor']
    value = evaluated['metrics'][case.metric]
    assert (value < floor) if case.metric in ('rmse', 'mae', 'log_loss') else (value > floor), (value, floor)


def test_served_answers_are_the_notebooks_and_monitoring_is_quiet(made):
    "The held-out rows, served: each answer bit-identical to the notebook's model in this process; `mlnb monitor` on them exits 0."
    from mlnb.registry import rows_json
    from mlnb.server import Server
    from mlnb.serving import answers, model_kind
    case, root, env, out, steps = made
    test = latest(root, 'data', env)['test']
    model = latest(root, 'train', env)['model']
    prepare = project_function(root, f'{case.name}.features:prepare')
    kind = model_kind(model)
    classes = [c.item() if hasattr(c, 'item') else c for c in model.classes_] if kind == 'classifier' else None
    expected, _ = answers(model, prepare(test), kind, classes)
    bento = steps['build'].split()[1].rstrip('.')
    rows = rows_json(test.drop(columns=case.label))
    with Server(bento, log_path=root / '.mlnb' / 'predictions' / f'{case.name}.jsonl', env=env) as srv:
        got = []
        for i in range(0, len(rows), 10_000):
            r = httpx.post(srv.url + '/predict', json={'rows': rows[i:i + 10_000]}, timeout=300)
            assert r.status_code == 200, r.text[:500]
            got += r.json()
    assert len(got) == len(expected) == len(test)
    keys = ('value',) if kind == 'regressor' else ('label', 'probability', 'probabilities')
    assert [[a[k] for k in keys] for a in got] == [[e[k] for k in keys] for e in expected]
    res = mlnb('monitor', '--last', str(len(got)), '--json', cwd=root, env=env, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report['alerts'] == [] and report['window']['rows'] == len(test)
    assert set(report['action_limits']['limits']) == set(tomllib.loads((root / 'pyproject.toml').read_text())['tool']['mlnb']['monitor']['action_limits'])


def test_the_segment_steps_train_one_model_per_value(made):
    case, root, env, out, steps = made
    if '--segment' not in case.options: pytest.skip('a table made without --segment')
    res = mlnb('run', 'evaluate_segment', '--engine', 'fast', cwd=root, env=env)
    assert res.stdout.count('promoted') >= 2
    segments = {m['segment'] for m in json.loads(mlnb('models', case.name, '--json', cwd=root, env=env).stdout) if m['champion']}
    assert segments == {None, 'female', 'male'}


def test_build_refuses_settings_that_do_not_fit_the_model(made):
    "The churn scaffold's action limit on a benign/malignant model, and a fallback answering 0/1, are refused at build (and serve), not alerts at run time."
    case, root, env, out, steps = made
    if case.name != 'cancer': pytest.skip('one project is enough')
    toml = (root / 'pyproject.toml').read_text()
    limits = re.search(r'^action_limits = .*$', toml, re.M).group(0)
    (root / 'pyproject.toml').write_text(toml.replace(limits, 'action_limits = { "1" = [0.02, 0.6] }'))
    res = mlnb('build', cwd=root, env=env, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "action_limits names '1', which is not a class of the model; its classes are 'benign', 'malignant'" in res.stderr
    (root / 'rules.py').write_text('def churn(rows):\n    return [1] * len(rows)\n')
    (root / 'pyproject.toml').write_text(toml.replace('fallback = "cancer.baseline:predict"', 'fallback = "rules:churn"'))
    res = mlnb('build', cwd=root, env=env, check=False)
    assert res.returncode == 2 and 'the fallback answered 1, which is not one of the classes' in res.stderr, res.stderr
    (root / 'pyproject.toml').write_text(toml)
    (root / 'rules.py').unlink()
    # a Bento built before `mlnb build` checked its settings: `mlnb serve` refuses it instead of alerting from the first request
    name, version = steps['build'].split()[1].rstrip('.').split(':')
    settings = root.parent / 'bentoml' / 'bentos' / name / version / 'src' / 'mlnb_service.json'
    kept = settings.read_text()
    settings.write_text(json.dumps({**json.loads(kept), 'monitor': {'action_limits': {'1': [0.02, 0.6]}}}))
    try: res = mlnb('serve', '--port', '1', cwd=root, env=env, check=False, timeout=60)
    finally: settings.write_text(kept)
    assert res.returncode == 2 and "action_limits names '1', which is not a class of the model" in res.stderr, res.stderr


# Refusals: each before anything is written, exit code 2, naming the column and the fix.
def _tables(folder):
    df = penguins()
    files = {'penguins.csv': df, 'one.csv': df.assign(sex='male'), 'nolabel.csv': df.assign(sex=None),
             'blank.csv': df.assign(comment=None), 'dup.csv': df.assign(**{'penguin id': df['penguin id'] % 100}),
             'cancer.csv': breast_cancer()}
    for name, frame in files.items(): frame.to_csv(folder / name, index=False)
    (folder / 'broken.parquet').write_bytes(b'PAR1 this is not parquet')
    return folder


REFUSALS = [
    (('one.csv', '--label', 'sex'), "label 'sex' has one value, 'male'", 'Choose another --label'),
    (('nolabel.csv', '--label', 'sex'), "label 'sex' is empty", 'Choose another --label'),
    (('penguins.csv', '--label', 'penguin id', '--key', 'penguin id'), "label 'penguin id' is also a --key", 'Choose another'),
    (('penguins.csv', '--label', 'island', '--problem', 'regression'), "needs a numeric label, but 'island' holds text", 'Choose --problem binary or multiclass'),
    (('penguins.csv', '--label', 'body_mass_g', '--problem', 'multiclass'), "'body_mass_g' has 94 distinct values, more than the 50 classes",
     'use --problem regression'),
    (('blank.csv', '--label', 'sex'), "'comment'", 'have no value in any row. Remove them'),
    (('broken.parquet', '--label', 'sex'), 'cannot be read as parquet', 'broken.parquet'),
    (('missing.csv', '--label', 'sex'), 'missing.csv does not exist', 'Data file'),
    (('penguins.csv', '--label', 'sex', '--key', 'penguin_id'), "--key 'penguin_id' is not a column of the table", "Did you mean 'penguin id'?"),
    (('penguins.csv', '--label', 'sex', '--time', 'seen at'), "--time 'seen at' is not a column of the table", 'Its columns: '),
    (('penguins.csv', '--label', 'sex', '--time', 'island'), "--time 'island' is not a timestamp column", 'Write them as 2024-05-01'),
    (('dup.csv', '--label', 'sex', '--key', 'penguin id'), 'does not identify a row', 'Pass the columns that together are unique'),
    (('penguins.csv', '--label', 'sex', '--positive', 'unknown'), "--positive 'unknown' is not a value of the label 'sex'", "'female', 'male'"),
    (('cancer.csv', '--label', 'diagnosis', '--metric', 'rmse'), "--metric 'rmse' is not a metric of a binary problem", 'choose one of roc_auc'),
    (('penguins.csv',), '--data needs --label COLUMN', ''),
]


@pytest.mark.parametrize('args,what,fix', REFUSALS, ids=[a[0] + ':' + what[:30] for a, what, fix in REFUSALS])
def test_a_table_that_cannot_make_a_project_is_refused_before_anything_is_written(args, what, fix, tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / 'refusal_tables'
    if not folder.exists(): folder.mkdir(); _tables(folder)
    res = mlnb('new', folder / 'proj', '--data', folder / args[0], *args[1:], cwd=folder, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert what in res.stderr and fix in res.stderr, res.stderr
    assert not (folder / 'proj').exists()


def test_table_options_without_data_are_refused_and_the_churn_scaffold_is_unchanged(tmp_path):
    res = mlnb('new', tmp_path / 'p', '--label', 'sex', '--time', 'seen at', cwd=tmp_path, check=False)
    assert res.returncode == 2 and '--label, --time describe the table of --data FILE' in res.stderr
    assert not (tmp_path / 'p').exists()
    assert '--data' in mlnb('new', '--help', cwd=tmp_path).stdout
