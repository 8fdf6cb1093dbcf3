"""`mlnb loop` on the scaffolded churn project: the lease, the data guard on stale production data, the label guard on poisoned ground truth.

The champion is trained once by a real `mlnb run` (papermill kernels); the prediction log the loop reads is written as the service writes it,
with the champion's own answers (its model and the project's exported feature function, in this process), and the ground truth beside it."""
import json, os, shutil, subprocess, sys, time, uuid

import pandas as pd
import pytest

from conftest import MLNB, mlnb

ALERTS = 'alerts.jsonl'
LOOP = '''
[tool.mlnb.loop]
triggers = { drift = false, performance = false, new_labels = 200 }
retrain = { params = { source = "production", production_since = "1d" } }
min_rows = 200
'''


@pytest.fixture(scope='module')
def trained(scaffold_template, tmp_path_factory):
    "The churn project with an alert command and a loop table, its champion trained on the CSV (profile ci); copy it before changing it."
    root = tmp_path_factory.mktemp('loop') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    toml = (root / 'pyproject.toml').read_text()
    assert '[tool.mlnb.alerts]\ncommand = ""' in toml
    toml = toml.replace('[tool.mlnb.alerts]\ncommand = ""', f'[tool.mlnb.alerts]\ncommand = "cat >> {ALERTS}; echo >> {ALERTS}"')
    (root / 'pyproject.toml').write_text(toml + LOOP)
    mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root)
    return root


@pytest.fixture
def project(trained, tmp_path):
    "A copy of the trained project (its ledger and champion with it), and the champion's tag."
    root = tmp_path / 'churn'
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns('__pycache__'))
    tag = next(m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=root).stdout) if m['champion'])
    return root, tag


def write_log(root, tag, n=600, as_of=None, flip=False):
    "Predictions of `n` simulated customers by the champion `tag`, logged as the service logs them, and their ground truth (flipped if asked)."
    from mlnb.registry import load_model
    from mlnb.serving.predict import answers
    from mlnb.serving.logs import feedback_lines
    sys.path.insert(0, str(root))
    try:
        for m in [m for m in sys.modules if m == 'churn' or m.startswith('churn.')]: del sys.modules[m]
        from churn.data import simulate
        from churn.features import prepare
        frame = simulate(n, seed=7, as_of=as_of)
        rows = frame.drop(columns='churned')
        model = load_model(tag)
        got, _ = answers(model, prepare(rows), 'classifier', [int(c) for c in model.classes_])
    finally: sys.path.remove(str(root))
    ts = json.dumps(pd.Timestamp.now(tz='UTC').isoformat())
    ids = [uuid.uuid4().hex for _ in range(n)]
    js = rows.to_json(orient='records', lines=True, date_format='iso', double_precision=15).splitlines()
    log = root / '.mlnb' / 'predictions' / 'churn.jsonl'
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'a') as f:
        for rid, row, a in zip(ids, js, got):
            f.write(f'{{"request_id":"{rid}","ts":{ts},"model":{json.dumps(tag)},"variant":"champion","row":{row},"prediction":{json.dumps(a)}}}\n')
    labels = (1 - frame['churned']) if flip else frame['churned']
    with open(log.with_name('churn.feedback.jsonl'), 'a') as f: f.write(feedback_lines(zip(ids, labels.astype(int).tolist())))
    return frame


def alerts_sent(root):
    path = root / ALERTS
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def flags(root):
    path = root / '.mlnb' / 'flags.json'
    return json.loads(path.read_text()) if path.exists() else {}


def test_two_passes_at_once_and_stale_production_data(project):
    root, tag = project
    write_log(root, tag, as_of='2020-01-31')  # answered today, about customers whose snapshot is years old: the contract's freshness fails
    dry = mlnb('loop', '--dry-run', cwd=root).stdout
    assert 'would retrain' in dry and 'new_labels' in dry and 'source=production' in dry, dry
    # two passes started together: one takes the lease and acts, the other names the holder and exits 0
    procs = [subprocess.Popen([MLNB, 'loop', '--json'], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = sorted((json.loads(o) for o, _ in outs), key=lambda d: d['action'])
    assert [d['action'] for d in done] == ['leased', 'stop'], done
    assert 'holds the lease' in done[0]['reason'] and done[0]['holder']['pid'] in [p.pid for p in procs]
    # the data guard stopped the retraining run, named the failing check, alerted, and changed nothing
    stop = done[1]
    assert 'the data guard stopped retraining run' in stop['reason'] and 'snapshot_date' in stop['reason'], stop['reason']
    runs = json.loads(mlnb('runs', '--json', cwd=root).stdout)
    assert len(runs) == 2 and runs[0]['status'] == 'failed' and runs[0]['reason'].startswith('mlnb loop: new_labels'), runs[0]
    sent = alerts_sent(root)
    assert [a['kind'] for a in sent] == ['data_guard', 'loop'], sent
    assert sent[0]['steps'] == ['data'] and 'snapshot_date' in sent[0]['alerts'][0]['message']
    assert sent[1]['action'] == 'stop' and sent[1]['run_id'] == runs[0]['id']
    assert 'rollout' not in flags(root)
    assert next(m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=root).stdout) if m['champion']) == tag
    # the decision is in the history and the status
    hist = mlnb('history', 'churn', cwd=root).stdout
    assert 'Decisions of `mlnb loop`' in hist and 'stop' in hist, hist
    status = json.loads(mlnb('loop', 'status', '--json', cwd=root).stdout)
    assert not status['rolling_out'] and status['latest']['action'] == 'stop' and status['lease'] is None


def test_poisoned_ground_truth_stops_at_the_label_guard(project):
    root, tag = project
    write_log(root, tag, flip=True)  # fresh customers, but their labels flipped: most churn, as training never saw
    res = mlnb('loop', cwd=root)
    assert 'stop: the label guard stopped the retraining run: label shift: class' in res.stdout, res.stdout
    runs = json.loads(mlnb('runs', '--json', cwd=root).stdout)
    assert len(runs) == 1  # no retraining run was made
    (sent,) = alerts_sent(root)
    assert sent['kind'] == 'loop' and sent['action'] == 'stop' and sent['evidence']['label_guard'][0]['check'] == 'label_shift'
    assert sent['evidence']['label_guard'][0]['value'] > 0.2
    assert 'rollout' not in flags(root)
