"""Generated BentoML services: real `bentoml build`, real `bentoml serve` on 127.0.0.1 with free ports."""
import json, os, shutil, subprocess, sys, threading, time
from pathlib import Path

import httpx
import nbformat
import pytest
import yaml

from conftest import BENTOML, MLNB, git_snapshot, golden, mlnb, model_metadata, run

def test_build_makes_a_current_bento_with_the_runtime_inside(served):
    root, env, bento = served
    listed = json.loads(run([BENTOML, 'list', '-o', 'json'], root, env=env).stdout)
    assert bento in [b['tag'] for b in listed]
    path = Path(env['BENTOML_HOME']) / 'bentos' / bento.replace(':', '/')
    info = yaml.safe_load((path / 'bento.yaml').read_text())
    assert info['spec'] == 2  # the current format, not the v1 fallback
    tag, _ = golden(root, env)
    assert [m['tag'] for m in info['services'][0]['models']] == [tag]
    assert (path / 'env' / 'docker' / 'Dockerfile').is_file()
    import mlnb.serving
    # the service is the runtime module as it is in mlnb, bound to settings that are data: no generated code
    assert (path / 'src' / 'service.py').read_text() == mlnb.serving.SERVICE_PY
    runtime = Path(mlnb.serving.__file__).parent
    shipped = sorted(p.relative_to(path / 'src' / 'mlnb_serving') for p in (path / 'src' / 'mlnb_serving').rglob('*.py'))
    assert shipped == sorted(p.relative_to(runtime) for p in runtime.rglob('*.py')), shipped
    for p in shipped: assert (path / 'src' / 'mlnb_serving' / p).read_text() == (runtime / p).read_text(), p
    import ast
    trees = [ast.parse((path / 'src' / 'mlnb_serving' / p).read_text()) for p in shipped]
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split('.')[0]
                for tree in trees for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names
                if not (isinstance(n, ast.ImportFrom) and n.level)} # the package's modules import one another relatively
    third_party = imported - set(sys.stdlib_module_names)
    # never mlnb: an image needs no mlnb; the Kafka client only when a log is a kafka:// topic (imported there, not at start);
    # pydantic_core is pydantic's own core (pinned by the pinned pydantic); pyarrow writes the log's columnar copy and xxhash its
    # checksums (pinned requirements of every Bento, `mlnb.bento._RUNTIME`); yaml is PyYAML, a requirement of bentoml (a live rollout reads a challenger's
    # model.yaml in BentoML's model store)
    assert third_party == {'bentoml', 'joblib', 'numpy', 'pandas', 'pyarrow', 'pydantic', 'pydantic_core', 'starlette', 'confluent_kafka', 'xxhash', 'yaml'}, third_party
    loaded = subprocess.run([sys.executable, '-c', 'import sys, mlnb_serving; print(sorted(m for m in sys.modules if m == "mlnb" or m.startswith(("mlnb.", "confluent_kafka"))))'],
                            cwd=path / 'src', capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == '[]', loaded
    cfg = json.loads((path / 'src' / 'mlnb_service.json').read_text())
    assert cfg['model'] == tag and cfg['transform'] == 'churn.features:prepare' and cfg['kind'] == 'classifier' and cfg['classes'] == [0, 1]
    assert [f['name'] for f in cfg['fields']][:3] == ['customer_id', 'snapshot_date', 'age'] and 'churned' not in [f['name'] for f in cfg['fields']]
    assert (path / 'src' / 'churn' / 'features.py').read_text() == (root / 'churn' / 'features.py').read_text()
    # the stored schema describes the real types: floats are numbers, categories are enums, answers name their classes
    route = next(r for r in json.loads((path / 'apis' / 'schema.json').read_text())['routes'] if r['name'] == 'predict')
    props = route['input']['properties']['rows']['items']['properties']
    assert props['monthly_charges']['type'] == 'number' and props['support_calls']['type'] == 'integer'
    assert props['contract']['enum'] == ['month-to-month', 'one-year', 'two-year']
    answer = route['output']['$defs']['Answer']['properties']
    assert answer['label']['enum'] == [0, 1] and 'positive class' in answer['probability']['description']
    # requirements: the project's declared dependencies and the runtime's, pinned; never mlnb itself
    reqs = (path / 'env' / 'python' / 'requirements.txt').read_text()
    from importlib.metadata import version
    for p in ('pandas', 'numpy', 'scikit-learn', 'pydantic', 'pyarrow', 'xxhash'):
        assert f'{p}=={version(p)}' in reqs, (p, reqs)
    assert 'mlnb' not in reqs


def test_verify_replays_the_golden_examples(served):
    root, env, bento = served
    out = mlnb('verify', cwd=root, env=env).stdout
    assert f'{bento} answers the 20 golden examples' in out and 'exactly as the notebook did' in out
    assert 'POST /predict' in out and '"probability"' in out


def test_build_exports_changed_notebooks_first(served, tmp_path):
    "An `#| export` cell changed since the last export: the Bento holds the new code, not the stale package."
    root0, env, _ = served
    root = tmp_path / 'churn'
    shutil.copytree(root0, root)
    nb_path = root / 'nbs' / '02_features.ipynb'
    nb = nbformat.read(nb_path, 4)
    cell = next(c for c in nb.cells if c.cell_type == 'code' and 'def prepare' in c.source)
    cell.source = cell.source.replace('"Model-ready features', '"Model-ready features (v2)')
    nbformat.write(nb, nb_path)
    bento = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    src = Path(env['BENTOML_HOME']) / 'bentos' / bento.replace(':', '/') / 'src' / 'churn' / 'features.py'
    assert 'Model-ready features (v2)' in src.read_text()
    assert 'Model-ready features (v2)' in (root / 'churn' / 'features.py').read_text()


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
    ('date only', lambda r: {**r, 'snapshot_date': '2026-11-02'}, 'snapshot_date'),
    ('timestamp after pandas range', lambda r: {**r, 'snapshot_date': '9999-12-31T23:59:59'}, 'snapshot_date'),
    ('timestamp before pandas range', lambda r: {**r, 'snapshot_date': '0001-01-01T00:00:00'}, 'snapshot_date'),
    ('timestamp as a number', lambda r: {**r, 'snapshot_date': 1700000000}, 'snapshot_date'),
    ('integer beyond int64', lambda r: {**r, 'support_calls': 2**64 - 1}, 'support_calls'),
    ('integer just beyond int64', lambda r: {**r, 'support_calls': 2**63}, 'support_calls'),
    ('bool for an integer', lambda r: {**r, 'age': True}, 'age'),
    ('float for an integer', lambda r: {**r, 'tenure_months': 12.0}, 'tenure_months'),
]

# JSON that Python's json module writes but no finite number is: the service must refuse it naming the field
NON_FINITE = ['Infinity', '-Infinity', 'NaN', '1e400', '-1e400']


def test_malformed_requests_are_4xx_and_the_server_stays_healthy(server, served):
    root, env, bento = served
    _, gold = golden(root, env)
    row = gold['rows'][0]
    url = server.url + '/predict'
    for name, change, field in ROW_OVERRIDES:
        r = httpx.post(url, json={'rows': [row, change(row)]}, timeout=30)
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        assert f"row 1, field '{field}'" in r.json()['error'], (name, r.text[:300])
    for token in NON_FINITE:
        body = json.dumps({'rows': [{**row, 'monthly_charges': 1.5}]}).replace('1.5', token)
        r = httpx.post(url, content=body, headers={'content-type': 'application/json'}, timeout=30)
        assert r.status_code == 400 and "field 'monthly_charges': Input should be a finite number" in r.json()['error'], (token, r.text)
    bodies = [
        ('empty list', dict(json={'rows': []}), 400),
        ('rows not a list', dict(json={'rows': row}), 400),
        ('no rows key', dict(json=[row]), 400),
        ('malformed JSON', dict(content=b'{"rows": [', headers={'content-type': 'application/json'}), 400),
        ('wrong content type', dict(content=json.dumps({'rows': [row]}), headers={'content-type': 'text/plain'}), 415),
        ('no content type', dict(content=json.dumps({'rows': [row]})), 415),
        ('pickle', dict(content=b'\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.', headers={'content-type': 'application/vnd.bentoml+pickle'}), 415),
        ('form upload', dict(files={'rows': ('rows.json', b'[]')}), 415),
        ('two content types', dict(content=json.dumps({'rows': [row]}),
                                   headers=[('content-type', 'multipart/form-data; boundary=x'), ('content-type', 'application/json')]), 415),
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


def test_timestamps_with_offsets_are_normalised(server, served):
    root, env, bento = served
    _, gold = golden(root, env)
    row = {**gold['rows'][0], 'snapshot_date': '2026-11-02T05:00:00'}
    answers, ids = [], []
    for ts in ('2026-11-02T05:00:00', '2026-11-02T05:00:00Z', '2026-11-02T10:00:00+05:00', '2026-11-01T23:00:00-06:00'):
        r = httpx.post(server.url + '/predict', json={'rows': [{**row, 'snapshot_date': ts}]}, timeout=30)
        assert r.status_code == 200, (ts, r.text)
        ids.append(r.json()[0]['request_id'])
        answers.append({k: v for k, v in r.json()[0].items() if k != 'request_id'})
    assert all(a == answers[0] for a in answers)
    import time
    deadline = time.time() + 10  # the log is written after the answers are sent
    while time.time() < deadline:
        logged = {l['request_id']: l for l in map(json.loads, server.log.read_text().splitlines()) if l['request_id'] in ids}
        if len(logged) == 4: break
        time.sleep(0.05)
    assert {l['row']['snapshot_date'] for l in logged.values()} == {'2026-11-02T05:00:00.000'}  # the contract's timestamps are naive UTC


def test_a_row_the_model_cannot_use_fails_only_its_own_request(server, served):
    "Concurrent requests are predicted together; a poisoned row must not fail its neighbours."
    from concurrent.futures import ThreadPoolExecutor
    root, env, bento = served
    _, gold = golden(root, env)
    from churn_rows import rows_like
    good = rows_like(gold['rows'], 30, seed=3)
    poison = {**good[0], 'customer_id': 'POISON', 'monthly_charges': 1e308}  # valid JSON and contract; too large for the forest
    batches_before = _metric(server, 'mlnb_batch_rows_count')
    statuses = {'good': [], 'bad': []}
    with ThreadPoolExecutor(31) as ex:
        for _ in range(10):
            futs = [ex.submit(httpx.post, server.url + '/predict', json={'rows': [r]}, timeout=60) for r in good]
            bad = ex.submit(httpx.post, server.url + '/predict', json={'rows': [poison]}, timeout=60)
            statuses['good'] += [f.result().status_code for f in futs]
            res = bad.result()
            statuses['bad'].append(res.status_code)
    assert statuses['good'] == [200] * 300, sorted(set(statuses['good']))
    assert statuses['bad'] == [422] * 10
    body = res.json()
    assert body['rows'][0]['row'] == 0 and 'too large' in body['rows'][0]['error'] and 'row 0' in body['error']
    calls = _metric(server, 'mlnb_batch_rows_count') - batches_before
    assert calls < 310, f'{calls} model calls for 310 requests: nothing was predicted together'
    # several rows in one request: the one bad row is named, the request fails as a whole
    r = httpx.post(server.url + '/predict', json={'rows': [good[1], poison, good[2]]}, timeout=60)
    assert r.status_code == 422 and [x['row'] for x in r.json()['rows']] == [1]


def _metric(server, name):
    "The sum of a Prometheus metric's samples on the server's /metrics."
    text = httpx.get(server.url + '/metrics', timeout=30).text
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))


def test_body_limits_are_enforced_on_the_bytes_read(server, served):
    import socket, time
    root, env, bento = served
    _, gold = golden(root, env)
    # a chunked body of 100 MiB, with no Content-Length: refused with 413 once it passes 64 MiB
    piece = (json.dumps(gold['rows'][0]) + ',').encode() * 2000
    with socket.create_connection((server.host, server.port), timeout=60) as s:
        s.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')
        sent, refused = 0, None
        try:
            s.sendall(b'%x\r\n{"rows": [\r\n' % 10)
            while sent < 100 * 2**20:
                s.sendall(b'%x\r\n%s\r\n' % (len(piece), piece))
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError): refused = sent
        s.settimeout(30)
        head = s.recv(4096)
    assert head.split(b'\r\n')[0] == b'HTTP/1.1 413 Request Entity Too Large', head[:200]
    assert b'64 MiB' in head
    assert refused is None or refused < 100 * 2**20  # the server did not read the rest
    # 50,000 rows (about 9 MiB) are answered, never refused as overload
    t0 = time.time()
    r = httpx.post(server.url + '/predict', json={'rows': gold['rows'] * 2500}, timeout=300)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()) == 50_000 and r.json()[-1]['label'] == gold['predictions'][-1]
    # more rows than the limit: 413 naming the limit
    r = httpx.post(server.url + '/predict', json={'rows': gold['rows'][:1] * 100_001}, timeout=300)
    assert r.status_code == 413 and 'limit of 100000' in r.json()['error']
    assert httpx.get(server.url + '/healthz').status_code == 200


def test_client_errors_are_logged_in_one_line(server, served):
    root, env, bento = served
    _, gold = golden(root, env)
    mark = len(server.output())
    for i in range(5):
        httpx.post(server.url + '/predict', json={'rows': [{**gold['rows'][0], 'contract': f'lifetime-{i}'}]}, timeout=30)
    out = server.output()[mark:]
    lines = [l for l in out.splitlines() if 'client error' in l]
    assert len(lines) == 5 and all("rows.0.contract: Input should be" in l for l in lines), out[-2000:]
    assert 'Traceback' not in out and 'ERROR' not in out


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
    assert meta['kind'] == 'classifier' and meta['classes'] == [0, 1] and 'positive class' in meta['answer']
    assert meta['limits'] == {'max_body_bytes': 64 * 2**20, 'max_rows': 100_000, 'max_string_length': 1000, 'max_batch_size': 1024}
    assert {f['name']: f['type'] for f in meta['fields']}['monthly_charges'] == 'float'
    assert httpx.get(server.url + '/readyz').status_code == 200
    lines = [json.loads(l) for l in server.log.read_text().splitlines()]
    logged = {l['request_id']: l for l in lines}
    for p, row in zip(preds, gold['rows'][:5]):
        entry = logged[p['request_id']]
        assert entry['prediction'] == {k: p[k] for k in ('label', 'probability', 'probabilities')}
        assert entry['row']['customer_id'] == row['customer_id'] and entry['ts'] and entry['model'] == tag and entry['variant'] == 'champion'


def test_openapi_document_describes_the_real_fields_and_answers(server):
    doc = httpx.get(server.url + '/docs.json', timeout=30).json()
    post = doc['paths']['/predict']['post']
    assert {'200', '400', '413', '415', '422'} <= set(post['responses'])
    assert "`label`, the predicted class (one of [0, 1])" in post['description']
    schemas = doc['components']['schemas']
    row = schemas['Row']['properties']
    assert row['monthly_charges']['type'] == 'number' and row['snapshot_date']['format'] == 'date-time'
    assert {'type': 'null'} in row['age']['anyOf'] and schemas['Row']['additionalProperties'] is False
    assert schemas['Answer']['properties']['label']['enum'] == [0, 1]


def test_a_broken_log_never_fails_a_prediction(served, tmp_path):
    root, env, bento = served
    from mlnb.server import Server
    blocker = tmp_path / 'not-a-dir'
    blocker.write_text('a file where the log folder should be')
    with Server(bento, log_path=blocker / 'predictions.jsonl', env=env) as srv:
        _, gold = golden(root, env)
        r = httpx.post(srv.url + '/predict', json={'rows': gold['rows'][:2]}, timeout=30)
        assert r.status_code == 200 and len(r.json()) == 2
        # the log is written after the answer is sent: wait for the warning rather than race it
        deadline = time.time() + 30
        while 'could not write the prediction log' not in srv.output() and time.time() < deadline: time.sleep(0.1)
        assert 'could not write the prediction log' in srv.output()


def test_a_port_taken_before_the_server_binds_it_is_chosen_again(served, tmp_path, monkeypatch):
    "Another process takes the port chosen free before `bentoml serve` binds it: the server starts again on another; a port asked for and in use fails at once."
    import socket, tempfile
    import mlnb.server as server
    from mlnb.errors import MlnbError
    root, env, bento = served
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0)); taken.listen()
        port, chosen = taken.getsockname()[1], iter([taken.getsockname()[1]])
        free = server.free_port
        monkeypatch.setattr(server, 'free_port', lambda host='127.0.0.1': next(chosen, None) or free(host))
        with server.Server(bento, log_path=tmp_path / 'predictions.jsonl', env=env) as srv:
            _, gold = golden(root, env)
            r = httpx.post(srv.url + '/predict', json={'rows': gold['rows'][:1]}, timeout=30)
            assert (srv.tries, srv.port != port, r.status_code) == (2, True, 200)
        launched, launch = [], server.launch
        monkeypatch.setattr(server, 'launch', lambda *a, **kw: launched.append(a[2]) or launch(*a, **kw))
        homes = lambda: {h for h in Path(tempfile.gettempdir()).glob('mlnb-bentoml-*') if (h / 'models').resolve() == (Path(env['BENTOML_HOME']) / 'models').resolve()}
        before = homes()
        with pytest.raises(MlnbError, match='already in use'):
            server.Server(bento, port=port, log_path=tmp_path / 'asked.jsonl', env=env, tries=5)
        assert (launched, homes()) == ([port], before) # started once, not five times, and its BentoML home removed


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
    count, total = _metric(server, 'mlnb_batch_rows_count'), _metric(server, 'mlnb_batch_rows_sum')
    assert count > 0 and total / count > 1, (count, total)


@pytest.mark.parametrize('sig', ['SIGTERM', 'SIGINT', 'SIGKILL'])
def test_mlnb_serve_leaves_no_server_behind(served, sig):
    "`mlnb serve` stopped by a signal (even SIGKILL) stops `bentoml serve` and its workers."
    import signal, socket, time
    import tempfile
    from mlnb.server import _descendants, _lost_a_port, free_port
    root, env, bento = served
    for attempt in range(3): # a port chosen free can be taken by another process before it is bound: then on a new one
        port, out = free_port(), tempfile.TemporaryFile()
        proc = subprocess.Popen([MLNB, 'serve', '--port', str(port)], cwd=root, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        output = lambda: (out.seek(0), out.read().decode(errors='replace'))[1]
        deadline, ready = time.time() + 120, False
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f'http://127.0.0.1:{port}/readyz', timeout=1).status_code == 200:
                    ready = True
                    break
            except httpx.HTTPError: time.sleep(0.2)
        if ready: break
        if proc.poll() is None: proc.kill()
        proc.wait()
        if attempt == 2 or not _lost_a_port(output()):
            pytest.fail(f'mlnb serve never became ready (exit code {proc.returncode}):\n{output()[-3000:]}')
    try:
        family = _descendants(proc.pid)
        assert len(family) >= 2  # bentoml serve and at least one worker
        proc.send_signal(getattr(signal, sig))
        proc.wait(60)
        deadline = time.time() + 30
        while time.time() < deadline and any(Path(f'/proc/{pid}').exists() for pid, _ in family): time.sleep(0.2)
        alive = [pid for pid, _ in family if Path(f'/proc/{pid}').exists() and 'Z' not in Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]]
        assert alive == [], f'{sig}: processes still running: {alive}'
        with pytest.raises(httpx.ConnectError): httpx.get(f'http://127.0.0.1:{port}/readyz', timeout=2)
    finally:
        if proc.poll() is None: proc.kill()
