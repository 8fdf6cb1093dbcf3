"""Data contracts on the scaffold: `mlnb check` against a matrix of bad data, and the guard in the pipeline."""
import json

import pandas as pd
import pytest

from conftest import mlnb


def _csv(project):
    return project / 'data' / 'customers.csv'


def _rewrite(project, fn):
    df = pd.read_csv(_csv(project), dtype=str, keep_default_na=False)
    fn(df).to_csv(_csv(project), index=False) if fn is not None else None


def drop_region(df): return df.drop(columns='region')
def extra_column(df): return df.assign(coupon='SPRING')
def text_in_int(df): df.loc[3, 'tenure_months'] = 'twelve'; return df
def null_in_required(df): df.loc[[5, 9], 'monthly_charges'] = ''; return df
def unknown_category(df): df.loc[7, 'contract'] = 'lifetime'; return df
def out_of_range(df): df.loc[11, 'age'] = '150'; return df
def duplicate_key(df): df.loc[12, 'customer_id'] = df.loc[13, 'customer_id']; return df
def stale(df): df.loc[[1, 2], 'snapshot_date'] = '2020-01-31'; return df
def header_only(df): return df.iloc[:0]
def future(df): df.loc[[4], 'snapshot_date'] = '2099-01-01'; return df


MATRIX = [
    (drop_region, 'region', 'column_in_dataframe'),
    (extra_column, 'coupon', 'column_in_schema'),
    (text_in_int, 'tenure_months', 'coerce_dtype'),
    (null_in_required, 'monthly_charges', 'not_nullable'),
    (unknown_category, 'contract', 'isin'),
    (out_of_range, 'age', 'in_range'),
    (duplicate_key, 'customer_id', 'field_uniqueness'),
    (stale, 'snapshot_date', 'max_age'),
    (future, 'snapshot_date', 'max_age'),
    (header_only, '(all rows)', 'min_rows'),
]


@pytest.mark.parametrize('fault, column, check', MATRIX, ids=[m[0].__name__ for m in MATRIX])
def test_bad_data_is_caught_naming_column_and_check(project, fault, column, check):
    _rewrite(project, fault)
    res = mlnb('check', 'data/customers.csv', '--contract', 'customers', '--json', cwd=project, check=False)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out['valid'] is False
    hits = [f for f in out['failures'] if f['column'] == column and f['check'].startswith(check)]
    assert hits, out['failures']
    table = mlnb('check', 'data/customers.csv', '--contract', 'customers', cwd=project, check=False)
    assert table.returncode == 1 and column in table.stdout and check in table.stdout


def test_truncated_csv(project):
    text = _csv(project).read_text()
    _csv(project).write_text(text[: len(text) - 40])  # cut in the middle of the last line
    res = mlnb('check', 'data/customers.csv', '--contract', 'customers', '--json', cwd=project, check=False)
    assert res.returncode == 1, res.stderr
    failures = json.loads(res.stdout)['failures']
    assert any(f['check'] == 'not_nullable' and f['failing_rows'] == 1 for f in failures), failures


@pytest.mark.parametrize('content, expected', [(b'', 'is empty (0 bytes)'), (None, 'does not exist')])
def test_unusable_files_exit_2(project, content, expected):
    path = project / 'data' / 'other.csv'
    if content is not None: path.write_bytes(content)
    res = mlnb('check', 'data/other.csv', '--contract', 'customers', cwd=project, check=False)
    assert res.returncode == 2 and expected in res.stderr


def test_missing_contract_exit_2(project):
    res = mlnb('check', 'data/customers.csv', '--contract', 'orders', cwd=project, check=False)
    assert res.returncode == 2 and "There is no contract 'orders'" in res.stderr


def test_good_data_and_parquet(project):
    res = mlnb('check', 'data/customers.csv', '--contract', 'customers', cwd=project)
    assert '5000 rows meet contract' in res.stdout
    pd.read_csv(_csv(project)).to_parquet(project / 'data' / 'c.parquet')
    assert json.loads(mlnb('check', 'data/c.parquet', '--contract', 'customers', '--json', cwd=project).stdout)['valid']


def champion(project):
    return [m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=project).stdout) if m['champion']]


def test_pipeline_stops_at_the_data_step(project, fresh_store):
    mlnb('run', '--engine', 'fast', cwd=project)
    good = json.loads(mlnb('runs', '--json', cwd=project).stdout)[0]
    (champ,) = champion(project)
    mlnb('build', cwd=project)
    _rewrite(project, lambda df: out_of_range(unknown_category(df)))
    res = mlnb('run', '--engine', 'fast', cwd=project, check=False)
    assert res.returncode == 1
    assert "Step 'data' failed" in res.stderr and 'ContractError' in res.stderr
    assert 'contract' in res.stderr and 'isin' in res.stderr and 'age' in res.stderr and 'in_range' in res.stderr
    runs = json.loads(mlnb('runs', '--json', cwd=project).stdout)
    assert runs[0]['status'] == 'failed' and runs[0]['steps'] == {'failed': 1, 'skipped': 3}
    assert runs[1]['id'] == good['id'] and runs[1]['status'] == 'ok'
    # the outputs a hand-run notebook would read are still those of the good run
    from mlnb.ledger import latest_outputs
    good_train = [s for s in json.loads(mlnb('show', good['id'], '--json', cwd=project).stdout)['steps'] if s['step'] == 'train'][0]
    assert latest_outputs(project, 'train') == good_train['outputs']
    assert champion(project) == [champ]  # the model in production is untouched
    served = mlnb('verify', cwd=project).stdout  # and its service still answers as its notebook did
    assert f'golden examples of {champ} exactly as the notebook did' in served


def test_a_contract_written_before_max_future_refuses_future_dates(project):
    "An older contract file has only `max_age`: it loads as it is and gets the default tolerance of one day."
    path = project / 'contracts' / 'customers.yaml'
    text = path.read_text()
    assert '      max_future: 1D\n' in text
    path.write_text(text.replace('      max_future: 1D\n', '').replace(', max_future=1D', ''))
    assert 'max_future' not in path.read_text()
    assert mlnb('check', 'data/customers.csv', '--contract', 'customers', cwd=project).returncode == 0
    _rewrite(project, future)
    res = mlnb('check', 'data/customers.csv', '--contract', 'customers', '--json', cwd=project, check=False)
    assert res.returncode == 1
    assert [(f['column'], f['check'].split('(')[0], f['failing_rows'], f['examples']) for f in json.loads(res.stdout)['failures']] == [
        ('snapshot_date', 'max_age', 1, ['2099-01-01 00:00:00'])]


def test_editing_the_contract_invalidates_the_steps_that_check_it(project):
    mlnb('run', 'data', 'features', '--engine', 'fast', cwd=project)
    runs = json.loads(mlnb('runs', '--json', cwd=project).stdout)
    data = json.loads(mlnb('show', runs[0]['id'], '--json', cwd=project).stdout)['steps'][0]
    # the step context records the hash of the contract the data step checks
    import hashlib, nbformat
    sha = hashlib.sha256((project / 'contracts' / 'customers.yaml').read_bytes()).hexdigest()
    injected = [c for c in nbformat.read(data['notebook'], 4).cells if 'injected-parameters' in c.metadata.get('tags', [])][0]
    assert f'"contracts": {{"customers": "{sha}"}}' in injected.source
    # a column made non-nullable: `mlnb check` fails the data, and `mlnb run` checks it again instead of reusing the cache
    path = project / 'contracts' / 'customers.yaml'
    text = path.read_text()
    age = text.index('  age:\n')
    path.write_text(text[:age] + text[age:].replace('    nullable: true\n', '', 1))
    assert mlnb('check', 'data/customers.csv', '--contract', 'customers', cwd=project, check=False).returncode == 1
    res = mlnb('run', 'data', 'features', '--engine', 'fast', cwd=project, check=False)
    assert res.returncode == 1 and "Step 'data' failed" in res.stderr and 'not_nullable' in res.stderr
    runs = json.loads(mlnb('runs', '--json', cwd=project).stdout)
    assert runs[0]['steps'] == {'failed': 1, 'skipped': 1}
    # a contract the pipeline names but the project lacks is a planning error
    path.unlink()
    res = mlnb('run', '--engine', 'fast', cwd=project, check=False)
    assert res.returncode == 2 and "Step 'data' checks contract 'customers' (in the code of nbs/01_data.ipynb), but " \
        "contracts/customers.yaml does not exist" in res.stderr
