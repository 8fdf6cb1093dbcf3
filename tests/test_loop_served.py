"""From drift to promotion against a served model: a running `bentoml serve` of the churn project's champion (a weak stump, built into a
Bento) with the live rollout on; drifted customers sent over HTTP, their ground truth posted to /feedback a request later; `mlnb loop`
passes: the drift trigger fires, a retraining run on the production rows makes a challenger the gate passes and the verification
clears, the service follows its rollout through the stages as labelled rows accumulate, and it is promoted. `mlnb history` holds every
decision with its evidence, and not one request failed while the stages changed (the customers rest while the first pass trains and
verifies, so that the retraining run has the cores; they come back while the service loads the challenger into the shadow).

No time is asserted: the loop decides on rows, and every wait has a generous bound."""
import itertools, json, sys, threading, time

import httpx
import pytest

from conftest import copy_project, mlnb
from test_live_rollout import tags, wait_for
from test_monitor import request_rows

LOOP = '''
[tool.mlnb.loop]
triggers = { drift = true, performance = false }
retrain = { params = { source = "production", production_since = "1d", n_estimators = 30 } }
stages = ["shadow", 0.5, 1.0]
min_rows = 150
min_time = "1s"
guard = { label_shift = 0.5 }
guardrails = { agreement = 0.1, p99_ratio = 50.0 }  # the stump and the forest disagree on many drifted customers
decide = { min_effect = 0.1, rule = "not_worse" }
'''


class Customers:
    """Drifted customers sent `size` at a time, one request after the other, from a thread until stopped; the ground truth of each
    request is posted to /feedback after the next request's answer. Keeps each row's (sent at, model) and every failure."""
    def __init__(self, url, frame, size=10):
        self.url, self.size, self.stop_ = url, size, threading.Event()
        self.rows, self.labels = request_rows(frame, 'churned'), frame['churned'].astype(int).tolist()
        self.seen, self.failed, self.labelled, self.count = [], [], 0, itertools.count()
        self.resting = threading.Event()  # set: no request is sent (the machine's cores go to a retraining run)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def send(self, client, late):
        "One request of drifted rows; then the ground truth of the request before it. Returns this request's ground truth."
        idx = [next(self.count) % len(self.rows) for _ in range(self.size)]
        t = time.monotonic()
        try: r = client.post(self.url + '/predict', json={'rows': [self.rows[i] for i in idx]})
        except httpx.HTTPError as e:
            self.failed.append(repr(e)); return late
        if r.status_code != 200:
            self.failed.append((r.status_code, r.text[:300])); return late
        answers = r.json()
        self.seen += [(t, a['model']) for a in answers]
        if late:
            f = client.post(self.url + '/feedback', json={'feedback': late})
            if f.status_code != 200: self.failed.append(('feedback', f.status_code, f.text[:300]))
            else: self.labelled += len(late)
        return [{'request_id': a['request_id'], 'label': self.labels[i]} for a, i in zip(answers, idx)]

    def _run(self):
        late = None
        with httpx.Client(timeout=60) as client:
            while not self.stop_.is_set():
                if self.resting.is_set(): time.sleep(0.05)
                else: late = self.send(client, late)

    def __enter__(self):
        self.thread.start(); return self

    def __exit__(self, *exc):
        self.stop_.set(); self.thread.join(120)


@pytest.fixture(scope='module')
def stump(scaffold_template, tmp_path_factory):
    "The churn project with a loop table: a weak champion (a stump, on the CSV, profile ci) built into a Bento, in a model store of its own."
    root = copy_project(scaffold_template, tmp_path_factory.mktemp('served_loop') / 'churn', ('floor = 0.7', 'floor = 0.5'), append=LOOP)
    env = {'BENTOML_HOME': str(tmp_path_factory.mktemp('served_loop_home'))}
    mlnb('run', '--engine', 'fast', '--profile', 'ci', '-p', 'n_estimators=1', '-p', 'max_depth=1', cwd=root, env=env)
    bento = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    return root, env, bento, tags(root, env).pop()


def test_drift_to_promotion_against_a_served_model(stump):
    from mlnb.server import Server
    root, env, bento, champion = stump
    sys.path.insert(0, str(root))
    try:
        from churn.data import simulate
        drifted = simulate(2000, seed=51, drift=1.0)
    finally: sys.path.remove(str(root))
    loop = lambda: json.loads(mlnb('loop', '--json', cwd=root, env=env, timeout=900).stdout)
    flags = lambda: json.loads((root / '.mlnb' / 'flags.json').read_text())['rollout']
    log = root / '.mlnb' / 'predictions' / 'churn.jsonl'  # where [tool.mlnb.serve] prediction_log says: the loop reads it
    with Server(bento, log_path=log, env=env, flags=root / '.mlnb' / 'flags.json') as srv:
        live = lambda: httpx.get(srv.url + '/metadata', timeout=30).json()['live_rollout']
        with Customers(srv.url, drifted) as customers:
            wait_for(lambda: customers.labelled >= 500, '500 drifted rows answered and labelled', timeout=240)
            # pass 1: drift fires the trigger; a retraining run on the production rows; the gate holds its candidate, verified: the shadow
            customers.resting.set()  # the first pass trains and verifies a challenger: the customers wait for its rollout
            first = loop()
            assert (first['action'], first['stage'], first['champion']) == ('start', 'shadow', champion), first
            assert [t['trigger'] for t in first['evidence']['triggers']] == ['drift'], first['evidence']['triggers']
            assert first['evidence']['gates'][0]['status'] == 'held' and first['evidence']['verify']['golden']['differences'] == []
            new = first['challenger']
            customers.resting.clear()
            wait_for(lambda: (lambda s: s['status'] == 'serving' and s['stage'] == 'shadow' and s['challenger'] == new)(live()),
                     'the service shadows the challenger', timeout=60)
            # then passes until it is promoted: the stages advance as labelled rows accumulate; nothing is rolled back
            passes, deadline = [first], time.monotonic() + 600
            while passes[-1]['action'] != 'promote':
                assert time.monotonic() < deadline, passes[-1]
                time.sleep(1)
                d = loop()
                passes.append(d)
                assert d['action'] in ('wait', 'advance', 'promote'), (d['action'], d['stage'], d['reason'], d['evidence'].get('variants'))
                if d['action'] == 'advance':
                    stage = flags()['stage']
                    wait_for(lambda: (lambda s: s['status'] == 'serving' and s['stage'] == stage)(live()), f'the service serves stage {stage}', timeout=60)
            wait_for(lambda: live()['status'] == 'off', 'the rollout is off in the service', timeout=60)
            time.sleep(1)
        assert customers.failed == [], customers.failed[:5]  # not one request (nor one piece of ground truth) failed through the stage changes
        # promoted: the running service answers with the new champion at once, although its Bento holds the old one
        time.sleep(3)  # the service reads its flags every second
        state = live()
        assert (state['champion'], state['promoted'], state['challenger']) == (new, True, None), state
        after = []
        with httpx.Client(timeout=60) as client:
            for i in range(3):
                r = client.post(srv.url + '/predict', json={'rows': customers.rows[10 * i:10 * i + 10]})
                assert r.status_code == 200, r.text[:300]
                after += r.json()
        assert {a['model'] for a in after} == {new}, {a['model'] for a in after}
    mine = {a['request_id'] for a in after}  # the service has stopped: its prediction log is written out
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    logged = [(l['variant'], l['model']) for l in lines if l['request_id'] in mine]
    assert logged == [('champion', new)] * len(after), logged  # the monitor of the new champion sees its rows
    acted = [d for d in passes if d['action'] != 'wait']
    assert [(d['action'], d['stage']) for d in acted] == [('start', 'shadow'), ('advance', 'shadow'), ('promote', 0.5)], \
        [(d['action'], d['stage'], d['reason']) for d in passes]
    assert all(d['rollout'] == first['rollout'] and d['challenger'] == new for d in passes), passes
    assert 'promoted: the challenger is not worse by more than 0.1' in passes[-1]['reason'], passes[-1]['reason']
    assert passes[-1]['evidence']['statistics']['rows'] >= passes[-1]['evidence']['horizon'] >= 150
    # the answers: the challenger answered in the 50% stage, next to the champion; the rows were routed to both
    models = {m for _, m in customers.seen}
    assert models == {champion, new}, models
    # the champion changed, with its evidence, and every decision is in the ledger and in `mlnb history`
    assert next(m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout) if m['champion']) == new
    assert (flags()['on'], flags()['champion']) == (False, new)  # promoted: the rollout state names the new champion
    changes = json.loads(mlnb('history', 'churn', '--json', cwd=root, env=env).stdout)
    assert (changes[-1]['kind'], changes[-1]['previous'], changes[-1]['tag']) == ('loop', champion, new), changes[-1]
    assert changes[-1]['evidence']['statistics']['test'] == passes[-1]['evidence']['statistics']['test']
    table = mlnb('history', 'churn', cwd=root, env=env).stdout
    assert 'Decisions of `mlnb loop`' in table and all(a in table for a in ('start', 'advance', 'promote')), table
    from mlnb.loop import decisions
    kept = decisions(root, 'churn', rollout=first['rollout'])
    assert [(k['action'], k['reason']) for k in kept] == [(d['action'], d['reason']) for d in passes]
    assert all(k['evidence'] for k in kept) and kept[-1]['evidence']['horizon'] == passes[-1]['evidence']['horizon']
