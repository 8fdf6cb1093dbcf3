"""The service, its fuzzing and its monitoring for a multiclass classifier (wine) and a regressor (diabetes).

The same checks as for the churn scaffold, on the ported projects of tests/projects/: real `bentoml serve`, real kernels.
"""
import json, shutil

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import mlnb, start_server, train_and_build
from projects import PROJECTS
from test_fuzz import fuzz


@pytest.fixture(scope='session')
def ported_served(ported_template, tmp_path_factory):
    "A ported project, trained, built and served for the session."
    p = PROJECTS[ported_template.name]
    root = tmp_path_factory.mktemp(f'served_{p.name}') / p.name
    shutil.copytree(ported_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    served = train_and_build(root, tmp_path_factory.mktemp(f'served_{p.name}_home'))
    srv = start_server(served, root / '.mlnb' / 'predictions' / f'{p.name}.jsonl')
    yield root, served[1], srv, p
    srv.stop()


def rows_of(root, p):
    "The extract's rows as requests, and their labels."
    df = pd.read_csv(root / p.csv)
    rows = json.loads(df.drop(columns=p.label).to_json(orient='records', date_format='iso'))
    return rows, df[p.label].tolist()


def test_the_service_answers_as_the_notebook_did(ported_served):
    root, env, srv, p = ported_served
    assert 'exactly as the notebook did' in mlnb('verify', cwd=root, env=env).stdout
    meta = httpx.get(srv.url + '/metadata').json()
    rows, labels = rows_of(root, p)
    answers = httpx.post(srv.url + '/predict', json={'rows': rows[:50]}, timeout=60).json()
    if p.kind == 'multiclass':
        assert meta['kind'] == 'classifier' and sorted(meta['classes']) == sorted(set(labels))
        for a in answers:
            assert a['label'] in meta['classes'] and len(a['probabilities']) == 3
            assert a['probability'] == max(a['probabilities']) and a['label'] == meta['classes'][int(np.argmax(a['probabilities']))]
        assert 'of the predicted label' in meta['answer']
        doc = httpx.get(srv.url + '/docs.json').json()['components']['schemas']['Answer']['properties']
        assert doc['label']['enum'] == meta['classes'] and str(meta['classes']) in doc['probabilities']['description']
    else:
        assert meta['kind'] == 'regressor' and meta['classes'] is None
        assert all(set(a) == {'request_id', 'value', 'model'} and isinstance(a['value'], float) for a in answers)


def test_generated_requests_never_get_a_server_error(ported_served):
    root, env, srv, p = ported_served
    seen = fuzz(srv.url, 300)
    assert sum(seen.values()) >= 300 and not any(code >= 500 for code in seen), seen
    assert seen[200] >= 20 and seen[400] >= 50, seen


def test_monitoring_drift_and_ground_truth(ported_served):
    root, env, srv, p = ported_served
    rows, labels = rows_of(root, p)
    tag = next(m['tag'] for m in json.loads(mlnb('models', p.name, '--json', cwd=root, env=env).stdout) if m['champion'])
    ref = json.loads(mlnb('lineage', tag, '--json', cwd=root, env=env).stdout)['reference']
    assert ref['rows'] < 1000 and len(ref['columns']) >= 5  # a small reference: the statistical tests decide
    numeric = [c for c in ref['columns'] if c in rows[0] and isinstance(rows[0][c], float)][:2]
    df = pd.DataFrame(rows)
    shifted = json.loads(df.assign(**{c: df[c] + 3 * df[c].std() for c in numeric}).to_json(orient='records', date_format='iso'))
    answers = []
    for part in (shifted, shifted):
        r = httpx.post(srv.url + '/predict', json={'rows': part}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        answers += r.json()
    truth = [{'request_id': a['request_id'], 'label': y} for a, y in zip(answers, labels + labels)]
    assert httpx.post(srv.url + '/feedback', json={'feedback': truth}, timeout=60).json() == {'received': len(truth)}
    res = mlnb('monitor', '--last', str(len(answers)), '--json', cwd=root, env=env, check=False)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out['tests'] == 'statistical tests' and set(numeric) <= {k for k, d in out['columns'].items() if d['drifted']}
    perf = out['performance']
    assert perf['metric'] == p.metric and perf['joined'] == len(answers) and perf['realised'] is not None
    if p.kind == 'multiclass': assert 0 <= perf['realised'] <= 1 and set(out['bias']['observed']) == set(out['classes'])
    else: assert perf['realised'] > 0 and isinstance(out['bias']['observed'], float)
    # the next run reads the parsed lines from their columnar copy, and judges the same as a parse of the JSON lines
    cache = root / '.mlnb' / 'cache' / 'logs'
    assert list(cache.glob('*.arrow')) and list(cache.glob('*.json'))
    again = json.loads(mlnb('monitor', '--last', str(len(answers)), '--json', cwd=root, env=env, check=False).stdout)
    shutil.rmtree(cache)
    fresh = json.loads(mlnb('monitor', '--last', str(len(answers)), '--json', cwd=root, env=env, check=False).stdout)
    for k in ('columns', 'predictions', 'performance', 'bias', 'window'): assert again[k] == out[k] == fresh[k], k
