"""Operating the served model: drift, ground truth, action limits, alerts and the report, against a real `bentoml serve`."""
import json, shutil, sys

import httpx
import pandas as pd
import pytest

from conftest import golden, mlnb, start_server, train_and_build

ALERTS = 'alerts.jsonl'


def request_rows(df, label):
    "A frame as request rows: no label, timestamps as ISO text, missing values as null."
    return json.loads(df.drop(columns=label).to_json(orient='records', date_format='iso'))


def send(server, rows, size=500):
    "POST the rows in requests of `size`; returns the answers."
    out = []
    for i in range(0, len(rows), size):
        r = httpx.post(server.url + '/predict', json={'rows': rows[i:i + size]}, timeout=120)
        assert r.status_code == 200, r.text[:500]
        out += r.json()
    return out


def monitor(root, env, *args, check=True):
    "`mlnb monitor --json` on the project at `root`: (exit code, result)."
    res = mlnb('monitor', '--json', *args, cwd=root, env=env, check=False)
    if check: assert res.returncode in (0, 1), res.stderr
    return res.returncode, (json.loads(res.stdout) if res.stdout.strip() else None), res.stderr


@pytest.fixture(scope='module')
def churn(scaffold_template, tmp_path_factory):
    "The churn project with an alert command, trained, built and served; its package imported for `simulate`."
    root = tmp_path_factory.mktemp('monitored') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    toml = (root / 'pyproject.toml').read_text()
    assert '[tool.mlnb.alerts]\ncommand = ""' in toml
    (root / 'pyproject.toml').write_text(toml.replace('[tool.mlnb.alerts]\ncommand = ""', f'[tool.mlnb.alerts]\ncommand = "cat >> {ALERTS}; echo >> {ALERTS}"'))
    served = train_and_build(root, tmp_path_factory.mktemp('monitored_home'))
    srv = start_server(served, root / '.mlnb' / 'predictions' / 'churn.jsonl')
    sys.path.insert(0, str(root))
    from churn.data import simulate
    yield root, served[1], srv, simulate
    srv.stop()
    sys.path.remove(str(root))


def alerts_sent(root):
    path = root / ALERTS
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def test_drift_demo_with_the_scaffolds_simulator(churn):
    root, env, srv, simulate = churn
    send(srv, request_rows(simulate(2000, seed=11, drift=0.0), 'churned'))
    code, res, _ = monitor(root, env, '--last', '2000')
    assert code == 0 and res['alerts'] == [], res['alerts']
    assert res['window']['rows'] == 2000 and res['tests'] == 'distances'  # the reference: 1,250 held-out customers
    assert not [k for k, d in res['columns'].items() if d['drifted']]
    assert alerts_sent(root) == []

    send(srv, request_rows(simulate(2000, seed=12, drift=1.0), 'churned'))
    code, res, _ = monitor(root, env, '--last', '2000')
    assert code == 1
    drifted = {k for k, d in res['columns'].items() if d['drifted']}
    assert {'monthly_charges', 'contract', 'age', 'support_calls'} <= drifted, drifted
    assert 'region' not in drifted and 'internet_service' not in drifted and 'payment_method' not in drifted
    assert res['columns']['snapshot_date']['method'] is None and res['columns']['customer_id']['method'] is None  # described, not tested
    assert res['predictions']['label']['drifted'] or res['predictions']['probability']['drifted']
    assert [a['kind'] for a in res['alerts']][:1] == ['drift']
    kept = json.loads((root / '.mlnb' / 'monitor' / 'latest.json').read_text())[res['model']]  # the verdict the mlnb panel shows
    assert kept['verdict'].startswith(f"{len(res['alerts'])} alert") and 'on 2000 predictions (the last 2000 predictions)' in kept['verdict'], kept
    sent = alerts_sent(root)
    assert len(sent) == 1 and sent[0]['kind'] == 'monitor' and sent[0]['model'] == res['model']
    assert 'monthly_charges' in json.dumps(sent[0]['alerts'])
    # the table says the same, for people
    text = mlnb('monitor', '--last', '2000', cwd=root, env=env, check=False)
    assert text.returncode == 1 and 'monthly_charges' in text.stdout and 'alert drift' in text.stdout
    # each line is parsed once: the runs above kept a columnar copy of what they parsed (the log grew between them);
    # a run from that copy judges the same as one that parses every line again
    cache = root / '.mlnb' / 'cache' / 'logs'
    metas = [json.loads(p.read_text()) for p in cache.glob('*.json')]
    assert len(metas) == 1 and metas[0]['end'] == (root / '.mlnb' / 'predictions' / 'churn.jsonl').stat().st_size, metas
    _, again, _ = monitor(root, env, '--last', '2000')
    shutil.rmtree(cache)
    _, fresh, _ = monitor(root, env, '--last', '2000')
    for k in ('columns', 'predictions', 'bias', 'window'): assert again[k] == res[k] == fresh[k], k


def test_ground_truth_bias_and_action_limits(churn):
    root, env, srv, simulate = churn
    frame = simulate(2000, seed=13, drift=1.0)
    answers = send(srv, request_rows(frame, 'churned'))
    truth = [{'request_id': a['request_id'], 'label': int(y)} for a, y in zip(answers, frame['churned'])]
    r = httpx.post(srv.url + '/feedback', json={'feedback': truth[:1500]}, timeout=60)
    assert r.status_code == 200 and r.json() == {'received': 1500}
    # the rest in bulk from a file, with a label for a prediction nobody made
    pd.DataFrame(truth[1500:] + [{'request_id': 'never-made-0', 'label': 1}]).to_csv(root / 'truth.csv', index=False)
    out = mlnb('feedback', 'truth.csv', cwd=root, env=env)
    assert 'Stored 501 ground-truth labels' in out.stdout
    code, res, _ = monitor(root, env, '--last', '2000')
    perf = res['performance']
    assert perf['metric'] == 'roc_auc' and perf['joined'] == 2000 and perf['without_feedback'] == 0
    assert perf['unmatched_feedback'] == 1
    assert 0.6 < perf['realised'] < 1 and perf['evaluation'] is not None
    observed = frame['churned'].mean()
    assert abs(res['bias']['observed']['1'] - observed) < 1e-9 and res['bias']['training']['1'] < observed
    assert any(t.get('roc_auc') is not None for t in res['timeline'])
    # an action limit below the observed positive rate fires
    text = (root / 'pyproject.toml').read_text()
    assert 'action_limits = { "1" = [0.02, 0.6] }' in text
    (root / 'pyproject.toml').write_text(text.replace('action_limits = { "1" = [0.02, 0.6] }', 'action_limits = { "1" = [0.0, 0.2] }'))
    try:
        code, res, _ = monitor(root, env, '--last', '2000')
        assert code == 1 and res['action_limits']['breached'].keys() == {'1'}
        assert any(a['kind'] == 'action_limit' for a in res['alerts'])
    finally: (root / 'pyproject.toml').write_text(text)


def test_bad_feedback_is_refused_and_nothing_is_lost(churn):
    root, env, srv, simulate = churn
    r = httpx.post(srv.url + '/feedback', json={'feedback': [{'request_id': 'x-0', 'label': 1}, {'request_id': 'x-1', 'label': 'yes'}]})
    assert r.status_code == 400 and "item 1, field 'label'" in r.json()['error']
    r = httpx.post(srv.url + '/feedback', json={'feedback': [{'request_id': 'x-2', 'label': True}]})
    assert r.status_code == 400
    log = root / '.mlnb' / 'predictions' / 'churn.feedback.jsonl'
    before = log.read_text() if log.exists() else ''
    assert '"x-0"' not in before  # a refused request stores nothing
    pd.DataFrame({'request_id': ['a-0', 'a-1'], 'label': [1, 7]}).to_csv(root / 'bad.csv', index=False)
    res = mlnb('feedback', 'bad.csv', cwd=root, env=env, check=False)
    assert res.returncode == 2 and "row 1: label 7 is not one of the classes [0, 1]" in res.stderr
    assert (log.read_text() if log.exists() else '') == before


def test_the_service_exports_the_answer_shares(churn):
    root, env, srv, simulate = churn
    send(srv, request_rows(simulate(300, seed=14), 'churned'))
    metrics = httpx.get(srv.url + '/metrics').text
    shares = {l.split('label="')[1].split('"')[0]: float(l.split()[-1]) for l in metrics.splitlines()
              if l.startswith('mlnb_prediction_share{')}
    assert set(shares) == {'0', '1'} and abs(sum(shares.values()) - 1) < 1e-6, shares


def test_requests_that_cannot_be_used(churn, tmp_path):
    root, env, srv, simulate = churn
    code, _, err = monitor(root, env, '--since', 'yesterday', check=False)
    assert code == 2 and "'yesterday' is not a window" in err
    code, _, err = monitor(root, env, '--log', str(tmp_path / 'nothing.jsonl'), check=False)
    assert code == 2 and 'There is no prediction log' in err
    code, _, err = monitor(root, env, '--model', 'churn:doesnotexist', check=False)
    assert code == 2 and 'churn:doesnotexist' in err and 'Traceback' not in err


def test_report_is_one_html_page_with_plots(churn, tmp_path):
    root, env, srv, simulate = churn
    out = tmp_path / 'report.html'
    res = mlnb('monitor', '--last', '2000', '--report', str(out), cwd=root, env=env, check=False)
    assert res.returncode in (0, 1), res.stderr
    page = out.read_text()
    assert page.count('<svg') >= 10 and 'monthly_charges' in page and '<script' not in page
    from browser import screenshot
    shot = screenshot(out, tmp_path / 'report.png')
    assert shot['svgs'] >= 10 and shot['width'] > 600 and 'Data drift' in shot['text']
    assert 'per-feature drift over time' in page and 'per-feature drift over time' in shot['text'] and 'roc_auc per chunk' in page
    assert 'Described, not tested: customer_id (a declared key), snapshot_date (a timestamp)' in page


@pytest.fixture(scope='module')
def keyed(churn, tmp_path_factory):
    "A project made by `mlnb new --data` from the scaffold's simulator with an integer key `id`, trained, built and served."
    from conftest import run as sh
    _, _, _, simulate = churn
    folder = tmp_path_factory.mktemp('keyed')
    rows = lambda n, seed, start: simulate(n, seed=seed, drift=0.0).drop(columns=['customer_id', 'snapshot_date']).assign(id=range(start, start + n))
    rows(5000, 1, 0).to_csv(folder / 'customers.csv', index=False)
    home = folder / 'bentoml'
    mlnb('new', 'keyed', '--data', 'customers.csv', '--label', 'churned', '--key', 'id', cwd=folder, env={'BENTOML_HOME': str(home)})
    root = folder / 'keyed'
    sh(['git', 'init', '-q'], root); sh(['git', 'add', '-A'], root); sh(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'new'], root)
    served = train_and_build(root, home)
    srv = start_server(served, root / '.mlnb' / 'predictions' / 'keyed.jsonl')
    yield root, served[1], srv, rows
    srv.stop()


def test_keys_are_described_and_calm_windows_stay_calm(keyed):
    "Ten windows of new customers like the training ones (new integer ids): nothing flagged; the key is described, never tested."
    root, env, srv, rows = keyed
    for w in range(10):
        send(srv, request_rows(rows(1000, 100 + w, 10_000 + 1000 * w), 'churned'))
        code, res, _ = monitor(root, env, '--last', '1000')
        assert code == 0 and res['alerts'] == [], (w, res['alerts'])
        key = res['columns']['id']
        assert (key['kind'], key['tested'], key['described'], key['method'], key['drifted']) == ('key', False, 'a declared key', None, False)
        tested = [k for k, d in res['columns'].items() if d['tested']]
        assert 'id' not in tested and len(tested) >= 8 and all(res['columns'][k]['thresholds'] == 'learned' for k in tested)
        assert len(res['chunks']) == 10 and all(len(res['columns'][k]['chunks']) == 10 for k in tested)
        assert res['multivariate'] and not res['multivariate']['drifted']


def test_a_shift_half_way_is_flagged_from_the_chunk_where_it_starts(keyed):
    root, env, srv, rows = keyed
    calm, moved = rows(1000, 200, 30_000), rows(1000, 201, 31_000)
    moved['monthly_charges'] = moved['monthly_charges'] * 1.25  # one feature, in the second half of the window
    send(srv, request_rows(calm, 'churned')); send(srv, request_rows(moved, 'churned'))
    code, res, _ = monitor(root, env, '--last', '2000')
    assert code == 1
    col = res['columns']['monthly_charges']
    assert col['drifted'] and col['drifted_from'] == 5, [c['score'] for c in col['chunks']]
    assert not any(c['drifted'] for c in col['chunks'][:5]) and all(c['drifted'] for c in col['chunks'][5:])
    assert [a['columns'] for a in res['alerts'] if a['kind'] == 'drift'] == [['monthly_charges']]
    assert res['columns']['id']['tested'] is False
    text = mlnb('monitor', '--last', '2000', cwd=root, env=env, check=False).stdout
    assert 'yes, from chunk 5' in text and 'described: a declared key' in text
