"""Safe rollout inside one Bento: shadow, canary, the fallback and its flag, action-limit fallback; real `bentoml serve`."""
import json, os, shutil, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import mlnb
from test_monitor import request_rows

WORSE = ['-p', 'n_estimators=5', '-p', 'max_depth=2']


@pytest.fixture(scope='module')
def rollout(scaffold_template, tmp_path_factory):
    "The churn project with a champion and a worse challenger; `simulate` and `prepare` of its package."
    root = tmp_path_factory.mktemp('rollout') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    env = {'BENTOML_HOME': str(tmp_path_factory.mktemp('rollout_home'))}
    mlnb('run', '--engine', 'fast', cwd=root, env=env)
    mlnb('run', '--engine', 'fast', *WORSE, cwd=root, env=env)
    models = json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout)
    champion = next(m['tag'] for m in models if m['champion'])
    challenger = next(m['tag'] for m in models if not m['champion'])
    sys.path.insert(0, str(root))
    from churn.data import simulate
    from churn.features import prepare
    yield root, env, champion, challenger, simulate, prepare
    sys.path.remove(str(root))


def serve(root, env, tmp, *build_args):
    "Build with `build_args` and serve the Bento with a log and a flags file of its own."
    from mlnb.server import Server
    bento = mlnb('build', *build_args, cwd=root, env=env).stdout.split()[1].rstrip('.')
    srv = Server(bento, log_path=tmp / 'predictions.jsonl', env=env, flags=tmp / 'flags.json')
    srv.log, srv.flags, srv.bento = tmp / 'predictions.jsonl', tmp / 'flags.json', bento
    return srv


def stored_model(env, tag):
    "The fitted model `tag` of the BentoML store at env's BENTOML_HOME, read from its file: BentoML keeps the store it first opened in a process for good, so it cannot be pointed at another home in this one."
    import joblib
    name, version = tag.split(':')
    return joblib.load(Path(env['BENTOML_HOME']) / 'models' / name / version / 'saved_model.pkl')


def logged(srv):
    return [json.loads(l) for l in srv.log.read_text().splitlines()] if srv.log.exists() else []


def test_shadow_answers_with_the_champion_and_logs_both(rollout, tmp_path):
    root, env, champion, challenger, simulate, prepare = rollout
    frame = simulate(500, seed=21)
    rows = request_rows(frame, 'churned')
    with serve(root, env, tmp_path, '--challenger', challenger, '--mode', 'shadow') as srv:
        meta = httpx.get(srv.url + '/metadata').json()
        assert meta['variants'] == {'champion': champion, 'challenger': challenger} and meta['rollout']['mode'] == 'shadow'
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda r: httpx.post(srv.url + '/predict', json={'rows': [r]}, timeout=60), rows))
        assert all(a.status_code == 200 for a in answers)
        answers = [a.json()[0] for a in answers]
        assert {a['model'] for a in answers} == {champion}  # the client never sees the challenger
        deadline = time.time() + 60
        while time.time() < deadline and sum(l['variant'] == 'challenger' for l in logged(srv)) < 500: time.sleep(0.2)
        lines = logged(srv)
        assert httpx.get(srv.url + '/metadata').json()['shadow']['skipped'] == 0
    by = {(l['request_id'], l['variant']): l for l in lines}
    assert all((a['request_id'], 'champion') in by and (a['request_id'], 'challenger') in by for a in answers)
    # the challenger's shadow predictions are what its model gives for these rows in a plain Python process
    model = stored_model(env, challenger)
    want = model.predict_proba(prepare(frame.drop(columns='churned')))[:, 1]
    got = [by[(a['request_id'], 'challenger')]['prediction']['probability'] for a in answers]
    assert max(abs(g - w) for g, w in zip(got, want)) <= 1e-9
    assert all(by[(a['request_id'], 'challenger')]['model'] == challenger for a in answers)


def test_canary_routes_a_sticky_share_by_key(rollout, tmp_path):
    root, env, champion, challenger, simulate, prepare = rollout
    frame = simulate(5000, seed=22)
    frame['customer_id'] = [f'K{i:05d}' for i in range(5000)]
    rows = request_rows(frame, 'churned')
    with serve(root, env, tmp_path, '--challenger', challenger, '--mode', 'canary', '--share', '0.2', '--key', 'customer_id') as srv:
        meta = httpx.get(srv.url + '/metadata').json()
        assert meta['rollout'] == {'mode': 'canary', 'share': 0.2, 'key': 'customer_id'}
        first, truth = {}, []
        for i in range(0, 5000, 500):
            for row, a, y in zip(rows[i:i + 500], httpx.post(srv.url + '/predict', json={'rows': rows[i:i + 500]}, timeout=120).json(), frame['churned'][i:i + 500]):
                first[row['customer_id']] = a['model']
                truth.append({'request_id': a['request_id'], 'label': int(y)})
        share = sum(m == challenger for m in first.values()) / len(first)
        assert 0.17 <= share <= 0.23, share
        again = rows[::-1][:1000]  # the same keys, another order, other requests
        second = httpx.post(srv.url + '/predict', json={'rows': again}, timeout=120).json()
        assert all(first[r['customer_id']] == a['model'] for r, a in zip(again, second))
        # ground truth of the first 5000: each label belongs to the variant that answered its request
        assert all(httpx.post(srv.url + '/feedback', json={'feedback': truth[i:i + 1000]}).status_code == 200 for i in range(0, 5000, 1000))
        deadline, fed = time.time() + 60, srv.log.with_name('predictions.feedback.jsonl')
        while time.time() < deadline and (len(logged(srv)) < 6000 or not fed.exists() or len(fed.read_text().splitlines()) < 5000): time.sleep(0.2)
        lines = logged(srv)
        res = mlnb('monitor', '--json', '--model', champion, '--log', str(srv.log), '--last', '2000', cwd=root, env=env, check=False)
        assert res.returncode in (0, 1) and res.stdout.startswith('{'), (res.returncode, res.stdout[:500], res.stderr[-2000:])
        v = json.loads(res.stdout)['variants']
        # the window: the champion's last 2000 answers, and the challenger's answers logged from the first of them on
        start = [i for i, l in enumerate(lines) if l['variant'] == 'champion'][-2000]
        labelled = {t['request_id'] for t in truth}
        want = {n: [l for l in lines[start:] if l['variant'] == n] for n in ('champion', 'challenger')}
        assert v['mode'] == 'canary/ab' and 'shadowed_rows' not in v
        for n in ('champion', 'challenger'):
            assert v['variants'][n]['rows'] == len(want[n]) and v['variants'][n]['joined'] == sum(l['request_id'] in labelled for l in want[n]), n
        assert len(want['champion']) == 2000 and 300 < len(want['challenger']) < 700
        t = v['statistics']
        assert (t['paired'], t['test']) == (False, "DeLong's test, independent ROC curves")
        assert (t['champion_rows'], t['challenger_rows']) == (v['variants']['champion']['joined'], v['variants']['challenger']['joined'])
        assert v['verdict'] in ('champion better', 'not enough evidence yet', 'no difference shown') and v['promote'] is not True
        # verify replays both models' golden rows, each pinned to its model
        assert 'golden examples of' in mlnb('verify', srv.bento, cwd=root, env=env).stdout


def test_fallback_flag_and_a_row_the_model_cannot_use(rollout, tmp_path):
    root, env, champion, challenger, simulate, prepare = rollout
    rows = request_rows(simulate(50, seed=23), 'churned')
    with serve(root, env, tmp_path) as srv:
        flip = lambda state: mlnb('flag', 'fallback', state, '--file', str(srv.flags), '--reason', 'test', cwd=root, env=env)
        seen, stop = [], threading.Event()
        def stream():
            i = 0
            while not stop.is_set():
                r = httpx.post(srv.url + '/predict', json={'rows': [rows[i % 50]]}, timeout=30)
                seen.append((time.time(), r.status_code, r.json()[0]['model'] if r.status_code == 200 else r.text))
                i += 1
        t = threading.Thread(target=stream)
        t.start()
        # each switch is timed from when `mlnb flag` has written the file (its own start, a second or more on a busy machine, is not the service's)
        time.sleep(2); asked_on = time.time(); flip('on'); on = time.time()
        time.sleep(4); asked_off = time.time(); flip('off'); off = time.time()
        time.sleep(4); stop.set(); t.join()
        assert all(s == 200 for _, s, _ in seen), [x for x in seen if x[1] != 200][:3]
        assert all(m == champion for t0, _, m in seen if t0 < asked_on)
        assert all(m == 'fallback' for t0, _, m in seen if on + 2 < t0 < asked_off), 'the flag did not reach the service within 2 s'
        assert all(m == champion for t0, _, m in seen if t0 > off + 2), 'the flag switched off did not reach the service within 2 s'
        assert sum(1 for t0, _, m in seen if on < t0 < asked_off and m == 'fallback') > 10
        meta = httpx.get(srv.url + '/metadata').json()
        assert meta['fallback']['configured'] and meta['fallback']['flag'] is False
        # a row the model cannot use gets the fallback's answer; the rest of its request gets the model's
        poison = {**rows[1], 'monthly_charges': 1e308}
        r = httpx.post(srv.url + '/predict', json={'rows': [rows[0], poison, rows[2]]}, timeout=30)
        assert r.status_code == 200 and [a['model'] for a in r.json()] == [champion, 'fallback', champion]
        assert r.json()[1]['label'] in (0, 1)
    assert json.loads(srv.flags.read_text())['fallback']['on'] is False
    assert 'fallback' in mlnb('flag', '--file', str(srv.flags), cwd=root, env=env).stdout


def gauge(srv, name, label=''):
    "The value of gauge `name` (its line holding `label`, e.g. 'limit=\"1\"') on the service's /metrics."
    got = [float(l.rsplit(' ', 1)[1]) for l in httpx.get(srv.url + '/metrics').text.splitlines()
           if l.startswith((name + '{', name + ' ')) and label in l]
    assert len(got) == 1, (name, label, got)
    return got[0]


def test_an_action_limit_switches_to_the_fallback_and_alerts(rollout, tmp_path):
    root0, env, champion, challenger, simulate, prepare = rollout
    root = tmp_path / 'churn'
    shutil.copytree(root0, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    text = (root / 'pyproject.toml').read_text()
    text = text.replace('action_limits = { "1" = [0.02, 0.6] }',  # fallback_leave unset: its default, 0.02
                        'action_limits = { "1" = [0.0, 0.3] }\nfallback_on_action_limit = true\nwindow = 200\nmin_rows = 100\nfallback_dwell = 1')
    alerts = tmp_path / 'alerts.jsonl'
    text = text.replace('[tool.mlnb.alerts]\ncommand = ""', f'[tool.mlnb.alerts]\ncommand = "cat >> {alerts}; echo >> {alerts}"')
    (root / 'pyproject.toml').write_text(text)
    mlnb('promote', champion, cwd=root, env=env)
    frame = simulate(600, seed=24, drift=1.0)
    rows = request_rows(frame, 'churned')  # about 45% churn: over the limit of 30%
    # which rows the champion answers 1 and which 0, to put the share where the test wants it
    model = stored_model(env, champion)
    label = model.predict_proba(prepare(frame.drop(columns='churned'))).argmax(axis=1)
    ones, zeros = [r for r, y in zip(rows, label) if y == 1], [r for r, y in zip(rows, label) if y == 0]
    assert len(ones) >= 62 and len(zeros) >= 160, (len(ones), len(zeros))
    window = lambda k: ones[:k] + zeros[:200 - k]  # a whole window whose share of 1 is k / 200
    sent = lambda: [json.loads(l) for l in alerts.read_text().splitlines() if l.strip()] if alerts.exists() else []
    def wait_alerts(n):
        deadline = time.time() + 30
        while time.time() < deadline and len(sent()) < n: time.sleep(0.2)
        return sent()
    post = lambda part: {a['model'] for a in httpx.post(srv.url + '/predict', json={'rows': part}, timeout=60).json()}
    with serve(root, env, tmp_path, '--model', champion) as srv:
        models = []
        for i in range(0, 600, 50):
            models += [a['model'] for a in httpx.post(srv.url + '/predict', json={'rows': rows[i:i + 50]}, timeout=60).json()]
        assert set(models[:100]) == {champion}  # nothing is judged before min_rows answers
        assert set(models[-100:]) == {'fallback'}
        fb = httpx.get(srv.url + '/metadata').json()['fallback']
        assert fb['action_limit_broken'] is True and fb['action_limit_since'] and fb['action_limit_episodes'] == 1
        assert fb['action_limit_leave'] == {'margin': 0.02, 'dwell_s': 1}  # fallback_dwell passed to the service; fallback_leave's default
        assert gauge(srv, 'mlnb_action_limit_breached', 'limit="1"') == 1 and gauge(srv, 'mlnb_action_limit_fallback_since_seconds') > 0
        # the share crosses the limit back and forth, a request after another: 0.29 holds the limit but not its margin
        # (0.3 - 0.02), 0.31 breaks it; without hysteresis each crossing switched the fallback and ran the alert command
        assert [post(window(k)) for k in (58, 62, 58, 62, 58, 62)] == [{'fallback'}] * 6
        assert [a['state'] for a in wait_alerts(1)] == ['entered']
        # 0.2 holds with the margin: the fallback leaves, once the dwell has passed since it entered
        deadline, answered = time.time() + 30, None
        while time.time() < deadline and answered != {champion}:
            answered = post(window(40))
            if answered != {champion}: time.sleep(0.2)
        assert answered == {champion}
        fb = httpx.get(srv.url + '/metadata').json()['fallback']
        assert (fb['action_limit_broken'], fb['action_limit_since'], fb['action_limit_holding']) == (False, None, {})
        assert gauge(srv, 'mlnb_action_limit_breached', 'limit="1"') == 0 and gauge(srv, 'mlnb_action_limit_fallback_since_seconds') == 0
        got = wait_alerts(2)
        assert [a['state'] for a in got] == ['entered', 'left'], got
        entered, left = got
        # a new episode: one more alert
        assert [post(window(62)), post(window(62))] == [{champion}, {'fallback'}]
        assert httpx.get(srv.url + '/metadata').json()['fallback']['action_limit_episodes'] == 2
        assert [a['state'] for a in wait_alerts(3)] == ['entered', 'left', 'entered']
    assert len(sent()) == 3  # nothing more, up to the service's end
    assert entered['kind'] == left['kind'] == 'action_limit' and '1' in entered['limits'] and 'fallback' in entered['alerts'][0]['message']
    assert left['limits'] == {'1': 0.2} and left['since'] == entered['since'] and 'model again' in left['alerts'][0]['message']
    assert left['seconds'] >= 0.95  # it stayed the dwell (1 s) at least


def test_monitor_compares_the_variants_and_promote_keeps_the_evidence(rollout, tmp_path):
    root, env, champion, challenger, simulate, prepare = rollout
    frame = simulate(800, seed=25)
    with serve(root, env, tmp_path, '--challenger', challenger, '--mode', 'shadow') as srv:
        answers = []
        for i in range(0, 800, 100):
            answers += httpx.post(srv.url + '/predict', json={'rows': request_rows(frame.iloc[i:i + 100], 'churned')}, timeout=60).json()
        truth = [{'request_id': a['request_id'], 'label': int(y)} for a, y in zip(answers, frame['churned'])]
        assert httpx.post(srv.url + '/feedback', json={'feedback': truth}).status_code == 200
        deadline = time.time() + 60
        while time.time() < deadline and sum(l['variant'] == 'challenger' for l in logged(srv)) < 800: time.sleep(0.2)
    # --last 500: the champion's last 500 predictions (1000 lines of the log), and the challenger's answers to those same requests
    res = mlnb('monitor', '--json', '--model', champion, '--log', str(srv.log), '--last', '500', cwd=root, env=env, check=False)
    assert res.returncode in (0, 1) and res.stdout.startswith('{'), (res.returncode, res.stdout[:500], res.stderr[-2000:])
    out = json.loads(res.stdout)
    v, last = out['variants'], [a['request_id'] for a in answers[-500:]]
    assert out['window']['rows'] == 500 and v['variants']['champion']['rows'] == 500 and v['variants']['challenger']['rows'] == 500
    assert v['challenger'] == challenger and v['mode'] == 'shadow' and v['shadowed_rows'] == 500 and 0 < v['agreement'] <= 1
    shadowed = {l['request_id'] for l in logged(srv) if l['variant'] == 'challenger'}
    assert set(last) <= shadowed and v['variants']['challenger']['joined'] == v['variants']['champion']['joined'] == 500
    assert v['variants']['champion']['roc_auc'] > v['variants']['challenger']['roc_auc']
    t = v['statistics']  # DeLong's paired test on the 500 requests both answered
    assert (t['test'], t['paired'], t['rows'], t['metric']) == ("DeLong's test, paired ROC curves", True, 500, 'roc_auc')
    assert t['ci'][0] <= t['difference'] <= t['ci'][1] and 0 <= t['p_value'] <= 1 and t['rows_needed'] >= 30
    assert t['difference'] == t['challenger_value'] - t['champion_value'] < 0
    assert v['verdict'] == t['verdict'] == 'champion better' and t['p_value'] < 0.05
    assert v['promote'] is False and v['reason'].startswith('not promoted: champion better (DeLong')
    text = ' '.join(mlnb('monitor', '--model', champion, '--log', str(srv.log), '--last', '500', cwd=root, env=env, check=False).stdout.split())
    assert 'not promoted: champion better (DeLong' in text and '95% CI [' in text and 'shadow: 500 rows predicted by both' in text, text[-2000:]
    out = mlnb('promote', challenger, '--reason', 'trying it live', cwd=root, env=env).stdout
    assert 'Live evidence kept with it: not promoted: champion better' in out
    hist = json.loads(mlnb('history', 'churn', '--json', cwd=root, env=env).stdout)
    assert hist[-1]['tag'] == challenger and hist[-1]['evidence']['challenger'] == challenger
    kept = hist[-1]['evidence']
    assert kept['mode'] == 'shadow' and kept['detail']['shadowed_rows'] == 500 and kept['detail']['statistics'] == t
    mlnb('rollback', 'churn', cwd=root, env=env)
