"""The shared stream: prediction events and ground truth on Kafka, read back by monitoring and by the next training run.

The broker is librdkafka's built-in mock cluster, started in a process of its own: it speaks the real Kafka protocol on
a loopback port, so the served model produces to it and `mlnb monitor` and `mlnb.production_data` consume from it in
other processes. Nothing replaces the Kafka client."""
import json, os, shutil, subprocess, sys, time

import httpx
import pandas as pd
import pytest

from conftest import mlnb
from test_monitor import request_rows

BROKER = """import time
from confluent_kafka import Producer
p = Producer({'test.mock.num.brokers': 1, 'log_level': 0})
print(','.join(f'{b.host}:{b.port}' for b in p.list_topics(timeout=10).brokers.values()), flush=True)
time.sleep(3600)
"""


def start_broker():
    "A mock Kafka cluster in a process of its own; returns (process, bootstrap servers)."
    proc = subprocess.Popen([sys.executable, '-c', BROKER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, proc.stdout.readline().strip()


@pytest.fixture(scope='module')
def kafka_project(scaffold_template, tmp_path_factory):
    "The churn project trained on its CSV, then set to log to Kafka, built and served; a broker for it."
    broker, servers = start_broker()
    root = tmp_path_factory.mktemp('stream') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    env = {'BENTOML_HOME': str(tmp_path_factory.mktemp('stream_home'))}
    mlnb('run', '--engine', 'fast', cwd=root, env=env)
    url = f'kafka://{servers}/churn-predictions'
    text = (root / 'pyproject.toml').read_text()
    (root / 'pyproject.toml').write_text(text.replace('prediction_log = ".mlnb/predictions/churn.jsonl"', f'prediction_log = "{url}"'))
    bento = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    from mlnb.server import Server
    srv = Server(bento, env=env, flags=root / '.mlnb' / 'flags.json')
    sys.path.insert(0, str(root))
    from churn.data import simulate
    yield root, env, srv, url, simulate
    srv.stop(); broker.kill()
    sys.path.remove(str(root))


def test_events_ground_truth_monitoring_and_the_next_training_run(kafka_project, tmp_path):
    root, env, srv, url, simulate = kafka_project
    from mlnb.events import read_kafka
    frame = simulate(1500, seed=31)
    rows = request_rows(frame, 'churned')
    answers = []
    for i in range(0, 1500, 300):
        r = httpx.post(srv.url + '/predict', json={'rows': rows[i:i + 300]}, timeout=60)
        assert r.status_code == 200
        answers += r.json()
    deadline = time.time() + 30
    while time.time() < deadline and (httpx.get(srv.url + '/metadata').json()['events']['delivered'] or 0) < 1500: time.sleep(0.2)
    # the events produced are the rows predicted: one each, with its answer
    data, info = read_kafka(url)
    events = {e['request_id']: e for e in map(json.loads, data.splitlines())}
    assert len(events) == 1500 and set(events) == {a['request_id'] for a in answers}
    for row, a in zip(rows, answers):
        e = events[a['request_id']]
        assert e['row']['customer_id'] == row['customer_id'] and e['prediction']['label'] == a['label'] and e['model'] == a['model']
    # ground truth goes to the feedback topic, and joins
    truth = [{'request_id': a['request_id'], 'label': int(y)} for a, y in zip(answers, frame['churned'])]
    assert httpx.post(srv.url + '/feedback', json={'feedback': truth}, timeout=60).json() == {'received': 1500}
    res = mlnb('monitor', '--source', url, '--last', '1500', '--json', cwd=root, env=env, check=False)
    assert res.returncode in (0, 1), res.stderr
    out = json.loads(res.stdout)
    assert out['window']['rows'] == 1500 and out['performance']['joined'] == 1500 and out['performance']['realised'] > 0.6
    assert sum(b - a for a, b in out['source']['partitions'].values()) == 1500
    # the next training set: the same frame from Kafka and from the same events written as JSON lines
    (tmp_path / 'events.jsonl').write_bytes(data)
    (tmp_path / 'events.feedback.jsonl').write_bytes(read_kafka(url + '-feedback')[0])
    code = ("import json, sys, mlnb\nfrom mlnb.stream import production_data\n"
            "a = production_data(since='1h', source=sys.argv[1]).sort_values('customer_id').reset_index(drop=True)\n"
            "b = production_data(since='1h', source=sys.argv[2]).sort_values('customer_id').reset_index(drop=True)\n"
            "import pandas as pd; pd.testing.assert_frame_equal(a, b)\n"
            "print(json.dumps({'rows': len(a), 'columns': list(a.columns), 'churn': float(a['churned'].mean())}))")
    res = subprocess.run([sys.executable, '-c', code, url, str(tmp_path / 'events.jsonl')], cwd=root, capture_output=True, text=True,
                         env={**os.environ, **env, 'PYTHONPATH': str(root)})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert got['rows'] == 1500 and got['columns'][-1] == 'churned' and abs(got['churn'] - frame['churned'].mean()) < 1e-9
    # a run trained on it: the contract guards it, the gate decides, and the lineage names the window of the stream
    mlnb('run', '--engine', 'fast', '-p', 'source=production', '-p', 'production_since=1h', cwd=root, env=env)
    runs = json.loads(mlnb('runs', '--json', cwd=root, env=env).stdout)
    newest = next(m for m in json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout) if m['run_id'] == runs[0]['id'])
    lin = json.loads(mlnb('lineage', newest['tag'], '--json', cwd=root, env=env).stdout)
    (window,) = lin['data']['windows']
    assert window['source'] == url and window['labelled'] == 1500 and window['step'] == 'data'
    assert list(lin['data']['inputs']) == ['(always_run)'] and window['snapshot']['kind'] == 'frame' # it read the stream, not data/customers.csv
    assert 'production data (data): 1500 labelled rows' in mlnb('lineage', newest['tag'], cwd=root, env=env).stdout
    # the production stream changes outside mlnb: the data step never comes from the cache (`always_run`), and says why
    out = mlnb('run', 'data', '--engine', 'fast', '-p', 'source=production', '-p', 'production_since=1h', '--explain', cwd=root, env=env).stdout
    again = json.loads(mlnb('runs', '--json', cwd=root, env=env).stdout)[0]
    data = next(s for s in json.loads(mlnb('show', again['id'], '--json', cwd=root, env=env).stdout)['steps'] if s['step'] == 'data')
    assert data['status'] == 'ok' and 'runs every time' in out, out


def test_a_broker_that_disappears_loses_no_answer_and_counts_what_is_lost(scaffold_template, tmp_path):
    broker, servers = start_broker()
    root = tmp_path / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    env = {'BENTOML_HOME': str(tmp_path / 'home')}
    mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root, env=env)
    text = (root / 'pyproject.toml').read_text().replace('prediction_log = ".mlnb/predictions/churn.jsonl"',
                                                         f'prediction_log = "kafka://{servers}/churn"\nkafka = {{ "message.timeout.ms" = 2000 }}')
    (root / 'pyproject.toml').write_text(text)
    bento = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    sys.path.insert(0, str(root))
    try:
        from churn.data import simulate
        rows = request_rows(simulate(500, seed=32), 'churned')
    finally: sys.path.remove(str(root))
    from mlnb.server import Server
    with Server(bento, env=env, flags=tmp_path / 'flags.json') as srv:
        meta = lambda: httpx.get(srv.url + '/metadata').json()['events']
        for i in range(0, 200, 20): assert httpx.post(srv.url + '/predict', json={'rows': rows[i:i + 20]}, timeout=30).status_code == 200
        deadline = time.time() + 30
        while time.time() < deadline and meta()['delivered'] < 200: time.sleep(0.1)
        assert meta()['delivered'] == 200 and meta()['undelivered'] == 0
        broker.kill(); broker.wait()
        slowest = 0.0
        for i in range(200, 500, 20):
            t0 = time.perf_counter()
            r = httpx.post(srv.url + '/predict', json={'rows': rows[i:i + 20]}, timeout=30)
            slowest = max(slowest, time.perf_counter() - t0)
            assert r.status_code == 200 and len(r.json()) == 20
        assert slowest < 2.0, f'a prediction waited {slowest:.1f} s for the missing broker'
        deadline = time.time() + 30
        while time.time() < deadline and meta()['undelivered'] < 300: time.sleep(0.2)
        time.sleep(3)  # nothing more is lost than the events made while the broker was gone
        assert meta()['undelivered'] == 300 and meta()['delivered'] == 200 and meta()['written'] == 500
        lost = sum(float(l.split()[-1]) for l in httpx.get(srv.url + '/metrics').text.splitlines() if l.startswith('mlnb_events_undelivered'))
        assert lost == 300
        assert 'could not deliver events to Kafka' in srv.output()


def test_kafka_without_its_client_is_refused_at_build(kafka_project):
    root, env, srv, url, simulate = kafka_project
    code = "import sys; sys.modules['confluent_kafka'] = None\nfrom mlnb.cli import main\nsys.argv = ['mlnb', 'build']\nmain()"
    res = subprocess.run([sys.executable, '-c', code], cwd=root, env={**os.environ, **env}, capture_output=True, text=True)
    assert res.returncode == 2 and 'pip install "mlnb[kafka]"' in res.stderr and 'Traceback' not in res.stderr
