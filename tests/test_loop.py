"""`mlnb loop` on the scaffolded churn project: the lease, the data guard on stale production data, the label guard on poisoned ground
truth, a better challenger taken through the stages to promotion; and the lease, decisions and status on a team's PostgreSQL.

The champion is trained once by a real `mlnb run` (papermill kernels), weak on purpose (a stump) so that a retrained model beats it clearly
(the stump answers faster than any forest: the safe-to-serve check before a rollout allows a retrained forest five times its p99 latency);
the prediction log the loop reads is written as the service writes it, with the models' own answers (their model and the project's exported
feature function, in this process), and the ground truth beside it. No service runs: the live rollout is tested in tests/test_live_rollout.py."""
import json, os, shutil, subprocess, sys, time, uuid

import pandas as pd
import pytest

from conftest import MLNB, mlnb

ALERTS = 'alerts.jsonl'
LOOP = '''
[tool.mlnb.loop]
triggers = { drift = false, performance = false, new_labels = 200 }
retrain = { params = { source = "production", production_since = "1d" } }
stages = ["shadow", 0.5, 1.0]
min_rows = 200
min_time = "1s"
guardrails = { agreement = 0.5, p99_ratio = 5.0 }
decide = { min_effect = 0.1 }
'''


def champion(root):
    "The champion's tag of the churn model."
    return next(m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=root).stdout) if m['champion'])


@pytest.fixture(scope='module')
def trained(scaffold_template, tmp_path_factory):
    "The churn project with an alert command and a loop table, its champion trained on the CSV (profile ci); copy it before changing it."
    root = shutil.copytree(scaffold_template, tmp_path_factory.mktemp('loop') / 'churn', ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    toml = (root / 'pyproject.toml').read_text().replace('[tool.mlnb.alerts]\ncommand = ""', f'[tool.mlnb.alerts]\ncommand = "cat >> {ALERTS}; echo >> {ALERTS}"')
    assert ALERTS in toml
    (root / 'pyproject.toml').write_text(toml.replace('floor = 0.7', 'floor = 0.5') + LOOP)
    mlnb('run', '--engine', 'fast', '--profile', 'ci', '-p', 'n_estimators=1', '-p', 'max_depth=1', cwd=root)  # a weak champion: a stump
    return root


@pytest.fixture
def project(trained, tmp_path):
    "A copy of the trained project (its ledger and champion with it), and the champion's tag."
    root = shutil.copytree(trained, tmp_path / 'churn', ignore=shutil.ignore_patterns('__pycache__'))
    return root, champion(root)


def write_log(root, tags, n=600, as_of=None, flip=False, mode='champion', seed=7, answered_by=None, failing=None):
    """Predictions of `n` simulated customers, logged as the service logs them, with their ground truth (flipped if asked). `tags`: variant ->
    model tag; `mode`: 'champion' (it answers alone), 'shadow' (both answer every row) or 'split' (every other row is the challenger's).
    `answered_by`: variant -> the tag of the model whose answers it logs (default: its own); `failing` (a number): the challenger fails the last
    `failing` rows it shadows, logged as the service logs them (no prediction, `failed`), every line then with its model call's `latency_ms`."""
    from mlnb.registry import load_model
    from mlnb.serving.predict import answers
    from mlnb.serving.logs import feedback_lines
    sys.path.insert(0, str(root))
    try:
        for m in [m for m in sys.modules if m == 'churn' or m.startswith('churn.')]: del sys.modules[m]
        from churn.data import simulate
        from churn.features import prepare
        frame = simulate(n, seed=seed, as_of=as_of)
        rows = frame.drop(columns='churned')
        got = {}
        for variant, tag in tags.items():
            model = load_model((answered_by or {}).get(variant, tag))
            got[variant] = answers(model, prepare(rows), 'classifier', [int(c) for c in model.classes_])[0]
    finally: sys.path.remove(str(root))
    ts = json.dumps(pd.Timestamp.now(tz='UTC').isoformat())
    ids = [uuid.uuid4().hex for _ in range(n)]
    js = rows.to_json(orient='records', lines=True, date_format='iso', double_precision=15).splitlines()
    timed = ',"latency_ms":1.5' if failing is not None else ''
    def line(rid, v, row, i):
        said = '"failed":"challenger"' if v == 'challenger' and i >= n - (failing or 0) else f'"prediction":{json.dumps(got[v][i])}'
        return f'{{"request_id":"{rid}","ts":{ts},"model":{json.dumps(tags[v])},"variant":"{v}","row":{row},{said}{timed}}}\n'
    log = root / '.mlnb' / 'predictions' / 'churn.jsonl'
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'a') as f:
        for i, (rid, row) in enumerate(zip(ids, js)):
            variants = ['champion', 'challenger'] if mode == 'shadow' else ['challenger' if mode == 'split' and i % 2 else 'champion']
            f.write(''.join(line(rid, v, row, i) for v in variants))
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
    write_log(root, {'champion': tag}, as_of='2020-01-31')  # answered today, about customers whose snapshot is years old: the contract's freshness fails
    dry = mlnb('loop', '--dry-run', cwd=root).stdout
    assert 'would retrain' in dry and 'new_labels' in dry and 'source=production' in dry, dry
    assert not (root / '.mlnb' / 'monitor' / 'latest.json').exists()  # the dry run monitored, and kept no verdict
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
    assert champion(root) == tag
    # the decision is in the history and the status
    hist = mlnb('history', 'churn', cwd=root).stdout
    assert 'Decisions of `mlnb loop`' in hist and 'stop' in hist, hist
    status = json.loads(mlnb('loop', 'status', '--json', cwd=root).stdout)
    assert not status['rolling_out'] and status['latest']['action'] == 'stop' and status['lease'] is None


def test_poisoned_ground_truth_stops_at_the_label_guard(project):
    root, tag = project
    write_log(root, {'champion': tag}, flip=True)  # fresh customers, but their labels flipped: most churn, as training never saw
    res = mlnb('loop', cwd=root)
    assert 'stop: the label guard stopped the retraining run: label shift: class' in res.stdout, res.stdout
    runs = json.loads(mlnb('runs', '--json', cwd=root).stdout)
    assert len(runs) == 1  # no retraining run was made
    (sent,) = alerts_sent(root)
    assert sent['kind'] == 'loop' and sent['action'] == 'stop' and sent['evidence']['label_guard'][0]['check'] == 'label_shift'
    assert sent['evidence']['label_guard'][0]['value'] > 0.2
    assert 'rollout' not in flags(root)


def test_a_better_challenger_goes_through_the_stages_and_is_promoted(project):
    root, tag = project
    write_log(root, {'champion': tag}, n=3000, seed=8)
    # pass 1: new labels trigger a retraining run on production; its candidate passes the gate, is held, and starts in the shadow
    first = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert first['action'] == 'start' and first['stage'] == 'shadow', first
    new = first['challenger']
    ro = flags(root)['rollout']
    assert (ro['on'], ro['challenger'], ro['stage'], ro['id']) == (True, new, 'shadow', first['rollout'])
    run = mlnb('show', first['run_id'], '--json', cwd=root).stdout
    assert json.loads(run)['gates'][0]['status'] == 'held' and champion(root) == tag
    assert json.loads(mlnb('runs', '--json', cwd=root).stdout)[0]['reason'].startswith('mlnb loop: new_labels')
    # pass 2: the shadow's rows, both models on each: enough labelled rows, no guardrail broken, no harm: advance to 50%
    time.sleep(1.5)
    write_log(root, {'champion': tag, 'challenger': new}, n=300, mode='shadow', seed=9)
    second = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert second['action'] == 'advance' and flags(root)['rollout']['stage'] == 0.5, second
    assert second['evidence']['test'] == "DeLong's test, paired ROC curves" and second['evidence']['readings']['agreement'] is not None
    status = mlnb('loop', 'status', cwd=root).stdout
    assert f'Rolling out {new}' in status and 'stage 50%' in status, status
    # pass 3 on: the deciding stage (the last with a control group) fixes its horizon at its first look with min_rows, waits for it,
    # and tests once: better, so promoted
    time.sleep(1.5)
    for seed in (10, 11, 12):
        write_log(root, {'champion': tag, 'challenger': new}, n=2000, mode='split', seed=seed)
        third = json.loads(mlnb('loop', '--json', cwd=root).stdout)
        if third['action'] != 'wait': break
        assert 'more labelled rows (horizon' in third['reason'], third
    assert third['action'] == 'promote' and 'promoted: the challenger is better at alpha 0.05' in third['reason'], third
    test = third['evidence']['statistics']
    assert test['rows'] >= third['evidence']['horizon'] and test['test'] == "DeLong's test, independent ROC curves" and test['p_value'] < 0.05
    assert champion(root) == new and flags(root)['rollout']['on'] is False
    assert flags(root)['rollout']['champion'] == new  # a running service answers with the new champion live, until its Bento is deployed
    status = mlnb('loop', 'status', cwd=root).stdout
    assert f'answers with the champion {new} live' in status and 'until a Bento holding it is deployed' in status, status
    history = json.loads(mlnb('history', 'churn', '--json', cwd=root).stdout)
    assert (history[-1]['kind'], history[-1]['previous'], history[-1]['tag']) == ('loop', tag, new)
    assert json.loads(mlnb('show', first['run_id'], '--json', cwd=root).stdout)['gates'][0]['status'] == 'applied'
    table = mlnb('history', 'churn', cwd=root).stdout
    assert all(a in table for a in ('start', 'advance', 'promote')), table
    assert [a['action'] for a in alerts_sent(root)] == ['start', 'advance', 'promote']


def test_a_broken_guardrail_rolls_the_challenger_back_at_once(project):
    root, tag = project
    toml = (root / 'pyproject.toml').read_text()
    (root / 'pyproject.toml').write_text(toml.replace('guardrails = { agreement = 0.5, p99_ratio = 5.0 }', 'guardrails = { agreement = 0.99, p99_ratio = 5.0 }'))
    write_log(root, {'champion': tag}, n=3000, seed=8)
    first = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert first['action'] == 'start', first
    time.sleep(1.5)
    write_log(root, {'champion': tag, 'challenger': first['challenger']}, n=300, mode='shadow', seed=9)
    second = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert second['action'] == 'rollback' and 'rolled back at once: agreement' in second['reason'] and 'at least 0.99' in second['reason'], second
    assert second['evidence']['test'] == 'guardrails' and second['evidence']['threshold'] == {'agreement': 0.99}
    assert flags(root)['rollout']['on'] is False and champion(root) == tag
    assert 'champion' not in flags(root)['rollout']  # no promotion ever: the Bento's champion answers
    gate = json.loads(mlnb('show', first['run_id'], '--json', cwd=root).stdout)['gates'][0]
    assert gate['status'] == 'declined' and gate['outcome'].startswith('rolled back by `mlnb loop` in stage shadow')
    assert [a['action'] for a in alerts_sent(root)] == ['start', 'rollback']
    # the next pass finds no rollout; the trigger still fires, but the next retraining run waits for retrain.cooldown
    after = json.loads(mlnb('loop', '--dry-run', '--json', cwd=root).stdout)
    assert after['action'] == 'nothing' and f"the rollout of {first['challenger']} was rolled back" in after['reason'], after


def test_the_lease_and_the_decisions_on_a_team_store(postgres, tmp_path, monkeypatch):
    "The same SQL on a team's PostgreSQL: a held lease makes `mlnb loop` name its holder and exit 0; decisions and the rollout state are shared."
    root = tmp_path / 'demo'
    root.mkdir()
    url = postgres.new_database()
    (root / 'pyproject.toml').write_text(f'[project]\nname = "demo"\n[tool.nbdev]\nlib_path = "demo"\n[tool.mlnb]\nstore = "{url}"\n'
                                         '[tool.mlnb.serve]\nmodel = "demo"\ntransform = "demo.f:g"\n')
    for k, v in postgres.env.items(): monkeypatch.setenv(k, v)
    mlnb('store', 'upgrade', cwd=root)
    from mlnb.flags import set_rollout
    from mlnb.loop import decisions, loop_status, record_decision, release_lease, take_lease
    from mlnb.project import load_project
    me, _ = take_lease(root)
    other, row = take_lease(root)
    assert me and other is None and row['holder'] == me and row['pid'] == os.getpid()
    res = mlnb('loop', cwd=root)  # this test's process holds the lease
    assert 'leased: another pass of `mlnb loop` holds the lease' in res.stdout and me in res.stdout, res.stdout
    release_lease(root, me)
    assert 'nothing: model \'demo\' has no champion yet' in mlnb('loop', cwd=root).stdout
    p = load_project(root)
    ro = set_rollout(p, 'demo:v2', 0.05, 'by hand')
    record_decision(p, {'model': 'demo', 'rollout': ro['id'], 'action': 'wait', 'stage': 0.05, 'challenger': 'demo:v2', 'reason': 'waiting',
                        'evidence': {'rows_needed': 120}})
    assert [d['action'] for d in decisions(root, 'demo')] == ['nothing', 'wait'] and decisions(root, rollout=ro['id'])[0]['evidence'] == {'rows_needed': 120}
    s = loop_status(p)
    assert (s['rolling_out'], s['stage'], s['rows_needed'], s['lease']) == (True, '5%', 120, None)


def ledger_rows(root):
    "Every row of every table of the project's SQLite ledger."
    import sqlite3
    db = sqlite3.connect(f"file:{root / '.mlnb' / 'ledger.db'}?mode=ro", uri=True)
    try:
        names = [r[0] for r in db.execute("select name from sqlite_master where type='table' order by name")]
        return {t: db.execute(f'select * from "{t}"').fetchall() for t in names}
    finally: db.close()


def a_shadow(project, failing):
    """The project's champion in a shadow rollout of a challenger (another tag; the champion's model gives its answers, no retraining run
    is needed), 300 shadowed rows of each logged with their ground truth, the challenger failing the last `failing` of them."""
    from mlnb.flags import set_rollout
    root, tag = project
    toml = (root / 'pyproject.toml').read_text()
    (root / 'pyproject.toml').write_text(toml.replace('guardrails = { agreement = 0.5, p99_ratio = 5.0 }',
                                                      'guardrails = { agreement = 0.5, p99_ratio = 5.0, error_rate = 0.05 }'))
    challenger = tag.split(':')[0] + ':shadowtwin1'
    ro = set_rollout(root, challenger, 'shadow', 'a challenger in the shadow')
    time.sleep(1.5)
    write_log(root, {'champion': tag, 'challenger': challenger}, n=300, mode='shadow', seed=9, answered_by={'challenger': tag}, failing=failing)
    return root, tag, challenger, ro


def test_a_shadow_that_fails_rows_is_rolled_back_by_the_error_rate(project):
    "The shadow logs the rows its challenger fails (no prediction, `failed`): more than `error_rate` of them rolls it back at once, with the numbers."
    root, tag, challenger, ro = a_shadow(project, failing=30)
    d = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert (d['action'], d['rollout'], d['stage']) == ('rollback', ro['id'], 'shadow'), d
    assert d['reason'].startswith('rolled back at once: error_rate 0.1 breaks its guardrail (at most 0.05): '
                                  'the challenger failed 30 of the 300 rows it shadowed'), d['reason']
    ev = d['evidence']
    assert (ev['test'], ev['threshold'], ev['readings']['error_rate'], ev['readings']['p99_ratio']) == ('guardrails', {'error_rate': 0.05}, 0.1, None), ev
    assert (ev['variants']['challenger']['rows'], ev['variants']['challenger']['errors'], ev['variants']['champion']['rows']) == (270, 30, 300), ev
    assert 'not judged in the shadow stage' in ev['guardrails']['p99_ratio'], ev['guardrails']
    assert flags(root)['rollout']['on'] is False and champion(root) == tag
    assert [(a['action'], a['evidence']['readings']['error_rate']) for a in alerts_sent(root)] == [('rollback', 0.1)]
    assert [x['action'] for x in json.loads(mlnb('loop', 'status', '--json', cwd=root).stdout)['decisions']] == [] # the rollout is over
    assert 'error_rate 0.1 breaks its guardrail' in mlnb('history', 'churn', cwd=root).stdout


def test_a_dry_run_during_a_rollout_changes_nothing(project):
    "`mlnb loop --dry-run` in a rollout says what the pass would decide, and leaves the ledger's rows, the flags file and the alerts as they were."
    root, tag, challenger, ro = a_shadow(project, failing=0)
    before, flags_before = ledger_rows(root), (root / '.mlnb' / 'flags.json').read_bytes()
    dry = json.loads(mlnb('loop', '--dry-run', '--json', cwd=root).stdout)
    assert dry['dry_run'] is True and dry['action'] in ('advance', 'wait') and dry['evidence']['readings']['error_rate'] == 0.0, dry
    assert ledger_rows(root) == before and (root / '.mlnb' / 'flags.json').read_bytes() == flags_before and alerts_sent(root) == []
    done = json.loads(mlnb('loop', '--json', cwd=root).stdout)  # the same pass, for real, changes them
    assert done['action'] == dry['action'] and 'dry_run' not in done, (dry, done)
    after = ledger_rows(root)
    assert len(after['decisions']) == len(before['decisions']) + 1 and len(after['evidence']) == len(before['evidence']) + 1
