"""Generated BentoML services: real `bentoml build`, real `bentoml serve` on 127.0.0.1 with free ports."""
import json, os, shutil, subprocess, sys, threading
from pathlib import Path

import httpx
import nbformat
import pytest
import yaml

from conftest import BENTOML, git_snapshot, mlnb, model_metadata, run

@pytest.fixture(scope='module')
def served(scaffold_template, tmp_path_factory):
    "A scaffolded project, trained and built once, with a model store of its own."
    root = tmp_path_factory.mktemp('served') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    home = tmp_path_factory.mktemp('served_home')
    env = {'BENTOML_HOME': str(home)}
    mlnb('run', '--engine', 'fast', cwd=root, env=env)
    out = mlnb('build', cwd=root, env=env).stdout
    bento = out.split()[1].rstrip('.')
    return root, env, bento


@pytest.fixture(scope='module')
def server(served, tmp_path_factory):
    root, env, bento = served
    old = os.environ.get('BENTOML_HOME')
    os.environ['BENTOML_HOME'] = env['BENTOML_HOME']
    from mlnb.bento import Server
    log = tmp_path_factory.mktemp('log') / 'predictions.jsonl'
    srv = Server(bento, log_path=log)
    srv.log = log
    yield srv
    srv.stop()
    os.environ['BENTOML_HOME'] = old


def golden(root, env):
    "The champion's tag and the golden examples its notebook recorded."
    models = json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout)
    tag = next(m['tag'] for m in models if m['champion'])
    return tag, json.loads(model_metadata(tag, root, env)['golden'])


def test_build_makes_a_current_bento_with_the_package_inside(served):
    root, env, bento = served
    listed = json.loads(run([BENTOML, 'list', '-o', 'json'], root, env=env).stdout)
    assert bento in [b['tag'] for b in listed]
    path = Path(env['BENTOML_HOME']) / 'bentos' / bento.replace(':', '/')
    info = yaml.safe_load((path / 'bento.yaml').read_text())
    assert info['spec'] == 2  # the current format, not the v1 fallback
    tag, _ = golden(root, env)
    assert [m['tag'] for m in info['services'][0]['models']] == [tag]
    assert (path / 'env' / 'docker' / 'Dockerfile').is_file()
    src = (path / 'src' / 'service.py').read_text()
    assert 'from churn.features import prepare as transform' in src and 'def prepare' not in src
    assert 'bentoml.models.BentoModel(MODEL_TAG)' in src and 'batchable=True' in src
    assert (path / 'src' / 'churn' / 'features.py').read_text() == (root / 'churn' / 'features.py').read_text()


def test_verify_replays_the_golden_examples(served):
    root, env, bento = served
    out = mlnb('verify', cwd=root, env=env).stdout
    assert f'{bento} answers the 20 golden examples' in out and 'exactly as the notebook did' in out
    assert 'POST /predict' in out and '"probability"' in out


def test_verify_fails_when_the_feature_function_changed(served, tmp_path):
    root0, env0, _ = served
    root = tmp_path / 'churn'
    shutil.copytree(root0, root)
    env = dict(env0)
    nb_path = root / 'nbs' / '02_features.ipynb'
    nb = nbformat.read(nb_path, 4)
    cell = next(c for c in nb.cells if c.cell_type == 'code' and 'def prepare' in c.source)
    assert '"tenure_years": tenure / 12,' in cell.source
    cell.source = cell.source.replace('"tenure_years": tenure / 12,', '"tenure_years": tenure / 6,')
    nbformat.write(nb, nb_path)
    run(['nbdev-export'], root)
    bento = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    res = mlnb('verify', bento, cwd=root, env=env, check=False)
    assert res.returncode == 1
    assert f'Bento {bento} does not answer as the notebook did' in res.stderr
    assert 'row ' in res.stderr and ('probabilities' in res.stderr or 'label' in res.stderr)


ROW_OVERRIDES = [
    ('missing field', lambda r: {k: v for k, v in r.items() if k != 'tenure_months'}, 'tenure_months'),
    ('wrong type', lambda r: {**r, 'support_calls': 'three'}, 'support_calls'),
    ('numeric string', lambda r: {**r, 'tenure_months': '12'}, 'tenure_months'),
    ('unknown category', lambda r: {**r, 'contract': 'lifetime'}, 'contract'),
    ('null where not allowed', lambda r: {**r, 'region': None}, 'region'),
    ('huge string', lambda r: {**r, 'customer_id': 'x' * 200_000}, 'customer_id'),
    ('nested garbage', lambda r: {**r, 'monthly_charges': {'a': [1, {'b': None}]}}, 'monthly_charges'),
    ('unknown field', lambda r: {**r, 'coupon': 'SPRING'}, 'coupon'),
    ('bad timestamp', lambda r: {**r, 'snapshot_date': 'yesterday'}, 'snapshot_date'),
]


def test_malformed_requests_are_4xx_and_the_server_stays_healthy(server, served):
    root, env, bento = served
    _, gold = golden(root, env)
    row = gold['rows'][0]
    url = server.url + '/predict'
    for name, change, field in ROW_OVERRIDES:
        r = httpx.post(url, json={'rows': [change(row)]}, timeout=30)
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        assert field in r.text, (name, r.text[:300])
    bodies = [
        ('empty list', dict(json={'rows': []}), 400),
        ('rows not a list', dict(json={'rows': row}), 400),
        ('no rows key', dict(json=[row]), 400),
        ('malformed JSON', dict(content=b'{"rows": [', headers={'content-type': 'application/json'}), 400),
        ('wrong content type', dict(content=json.dumps({'rows': [row]}), headers={'content-type': 'text/plain'}), 415),
        ('no content type', dict(content=json.dumps({'rows': [row]})), 415),
        ('pickle', dict(content=b'\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.', headers={'content-type': 'application/vnd.bentoml+pickle'}), 415),
        ('form upload', dict(files={'rows': ('rows.json', b'[]')}), 415),
    ]
    for name, kw, status in bodies:
        r = httpx.post(url, timeout=30, **kw)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
    # an oversized body is refused from its headers, before it is read
    import socket
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                  b'Content-Length: %d\r\n\r\n' % (65 * 1024 * 1024))
        assert s.recv(200).split(b'\r\n')[0] == b'HTTP/1.1 413 Request Entity Too Large'
    assert httpx.get(server.url + '/healthz').status_code == 200
    ok = httpx.post(url, json={'rows': gold['rows'][:3]}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()) == 3
    assert 'status=5' not in server.output()  # BentoML's access log: no request ended in a server error


def test_predictions_metadata_and_log(server, served):
    root, env, bento = served
    tag, gold = golden(root, env)
    r = httpx.post(server.url + '/predict', json={'rows': gold['rows'][:5]}, timeout=30)
    preds = r.json()
    assert [p['label'] for p in preds] == gold['predictions'][:5]
    assert all(p['model'] == tag and 0 <= p['probability'] <= 1 and len(p['probabilities']) == 2 for p in preds)
    meta = httpx.get(server.url + '/metadata').json()
    assert meta['model'] == tag and 'train_roc_auc' in meta['metrics'] and meta['run_id']
    assert meta['contract']['name'] == 'customers' and meta['transform'] == 'churn.features:prepare'
    assert httpx.get(server.url + '/readyz').status_code == 200
    lines = [json.loads(l) for l in server.log.read_text().splitlines()]
    logged = {l['request_id']: l for l in lines}
    for p, row in zip(preds, gold['rows'][:5]):
        entry = logged[p['request_id']]
        assert entry['prediction']['label'] == p['label'] and entry['row']['customer_id'] == row['customer_id'] and entry['ts']


def test_a_broken_log_never_fails_a_prediction(served, tmp_path):
    root, env, bento = served
    old = os.environ['BENTOML_HOME']; os.environ['BENTOML_HOME'] = env['BENTOML_HOME']
    from mlnb.bento import Server
    blocker = tmp_path / 'not-a-dir'
    blocker.write_text('a file where the log folder should be')
    try:
        with Server(bento, log_path=blocker / 'predictions.jsonl') as srv:
            _, gold = golden(root, env)
            r = httpx.post(srv.url + '/predict', json={'rows': gold['rows'][:2]}, timeout=30)
            assert r.status_code == 200 and len(r.json()) == 2
            assert 'could not write the prediction log' in srv.output()
    finally: os.environ['BENTOML_HOME'] = old


def test_many_rows_in_one_request_and_adaptive_batching(server, served):
    root, env, bento = served
    from churn_rows import rows_like
    _, gold = golden(root, env)
    rows = rows_like(gold['rows'], 300)
    r = httpx.post(server.url + '/predict', json={'rows': rows}, timeout=60)
    assert r.status_code == 200 and len(r.json()) == 300
    # the same rows predicted by the model in a plain Python process give the same answers
    script = ("import json, sys, bentoml, pandas as pd\nfrom churn.features import prepare\n"
              "rows = json.load(sys.stdin)['rows']\n"
              "frame = pd.DataFrame(rows).astype({'age': 'Int64', 'snapshot_date': 'datetime64[ns]'})\n"
              f"model = bentoml.sklearn.load_model({r.json()[0]['model']!r})\n"
              "print(json.dumps(model.predict_proba(prepare(frame))[:, 1].tolist()))")
    out = subprocess.run([sys.executable, '-c', script], input=json.dumps({'rows': rows}), capture_output=True, text=True,
                         cwd=root, env={**os.environ, **env, 'PYTHONPATH': str(root)}, check=True)
    want = json.loads(out.stdout)
    got = [p['probability'] for p in r.json()]
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-9
    # concurrent single-row requests are predicted together
    def one(i): httpx.post(server.url + '/predict', json={'rows': [rows[i]]}, timeout=60).raise_for_status()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(48)]
    for t in threads: t.start()
    for t in threads: t.join()
    metrics = httpx.get(server.url + '/metrics').text
    count = sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith('bentoml_service_adaptive_batch_size_count'))
    total = sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith('bentoml_service_adaptive_batch_size_sum'))
    assert count > 0 and total / count > 1, (count, total)
