"""A live rollout: a running `bentoml serve` follows the rollout state of its flags file (challenger, stage, off) with no rebuild,
no restart and no failed request; sticky routing by key; a challenger trained with other feature code is refused; with a team's
store, a rollout set on one machine reaches `mlnb serve` on another, which fetches the challenger from S3."""
import itertools, json, math, shutil, threading, time
from pathlib import Path

import httpx
import pytest

from conftest import mlnb, tags  # noqa: F401 (tags: for the tests that import it from here; the `live` fixture is in conftest)
from test_monitor import request_rows


class Traffic:
    "Requests of `size` rows, each with a new customer_id, sent one after the other from a thread until stopped; every row's outcome."
    def __init__(self, url, rows, size=10):
        self.url, self.rows, self.size, self.stop_ = url, rows, size, threading.Event()
        self.seen, self.failed, self.count = [], [], itertools.count()  # seen: (sent at, key, model)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=30) as client:
            while not self.stop_.is_set():
                batch = []
                for _ in range(self.size):
                    i = next(self.count)
                    batch.append({**self.rows[i % len(self.rows)], 'customer_id': f'K{i:07d}'})
                t = time.monotonic()
                try: r = client.post(self.url + '/predict', json={'rows': batch})
                except httpx.HTTPError as e:
                    self.failed.append(repr(e)); continue
                if r.status_code != 200:
                    self.failed.append((r.status_code, r.text[:300])); continue
                self.seen += [(t, row['customer_id'], a['model']) for row, a in zip(batch, r.json())]

    def __enter__(self):
        self.thread.start(); return self

    def __exit__(self, *exc):
        self.stop_.set(); self.thread.join(60)

    def since(self, t):
        return [(k, m) for s, k, m in list(self.seen) if s >= t]


def wait_for(pred, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got: return got
        time.sleep(0.1)
    pytest.fail(f'not within {timeout} s: {what}')


def wait_serving(url, proc, err, what):
    "Wait until the `mlnb serve` process `proc` answers /readyz at `url`; fail with what it wrote to `err` if it exits first."
    def ready():
        try: return httpx.get(url + '/readyz', timeout=1).status_code == 200
        except httpx.HTTPError: return proc.poll() is not None
    wait_for(ready, what, timeout=180)
    assert proc.poll() is None, err.read_text()[-3000:]


def test_a_running_service_follows_the_rollout_state_live(live, tmp_path):
    from mlnb.flags import clear_rollout, set_rollout
    from mlnb.server import Server
    from mlnb.serving import bucket
    root, env, bento, champion, challenger, other = live
    sys_path = str(root)
    import sys
    sys.path.insert(0, sys_path)
    try:
        from churn.data import simulate
        rows = request_rows(simulate(500, seed=31), 'churned')
    finally: sys.path.remove(sys_path)
    flags = root / '.mlnb' / 'flags.json'
    log = tmp_path / 'predictions.jsonl'
    with Server(bento, log_path=log, env=env, flags=flags) as srv:
        meta = lambda: httpx.get(srv.url + '/metadata').json()
        first = meta()
        assert first['variants'] == {'champion': champion} and first['live_rollout']['status'] == 'none'
        with Traffic(srv.url, rows) as traffic:
            time.sleep(1)
            # 1. the challenger answers a quarter of the keys, within seconds of the state change
            changed = time.monotonic()
            state = set_rollout(root, challenger, 0.25, 'retrained on drift')
            m = wait_for(lambda: (lambda d: d if d['live_rollout']['status'] == 'serving' else None)(meta()), 'the service serves stage 0.25')
            assert (m['live_rollout']['challenger'], m['live_rollout']['stage'], m['live_rollout']['key']) == (challenger, 0.25, 'customer_id')
            assert m['live_rollout']['state'] == state and m['variants'] == {'champion': champion}  # the Bento's own models are unchanged
            shown = mlnb('flag', cwd=root, env=env).stdout.replace('\n', '').replace('│', '').replace(' ', '')
            assert f"on:{challenger}answering0.25ofrows(rollout{state['id']})" in shown, shown
            served = wait_for(lambda: next((s for s, _, mdl in list(traffic.seen) if s >= changed and mdl == challenger), None),
                              'an answer by the challenger')
            assert served - changed < 10, served - changed
            time.sleep(0.5)
            settled = time.monotonic()
            wait_for(lambda: len(traffic.since(settled)) >= 2000, '2000 rows at stage 0.25', timeout=120)
            at25 = traffic.since(settled)
            assert {mdl for _, mdl in at25} == {champion, challenger}
            # routed by the key alone: the challenger answers exactly the keys whose bucket is below 0.25
            below = bucket([k for k, _ in at25]) < 0.25
            assert all((mdl == challenger) == b for (_, mdl), b in zip(at25, below))
            n, share = len(at25), sum(mdl == challenger for _, mdl in at25) / len(at25)
            assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n), (share, n)
            # 2. the next stage: every key that went to the challenger stays there, and a third of the others join it
            set_rollout(root, challenger, 0.5, 'stage passed')
            m = wait_for(lambda: (lambda d: d if d['live_rollout']['stage'] == 0.5 else None)(meta()), 'the service serves stage 0.5')
            assert m['live_rollout']['state']['id'] == state['id']  # the same rollout, its next stage
            again = [{**rows[i % len(rows)], 'customer_id': k} for i, (k, _) in enumerate(at25[:1000])]
            answers = httpx.post(srv.url + '/predict', json={'rows': again}, timeout=60).json()
            before = {k: mdl for k, mdl in at25[:1000]}
            moved = [before[r['customer_id']] == champion and a['model'] == challenger for r, a in zip(again, answers)]
            assert all(a['model'] == challenger for r, a in zip(again, answers) if before[r['customer_id']] == challenger)
            stayed = sum(before[r['customer_id']] == champion for r in again)
            assert abs(sum(moved) / stayed - 1 / 3) < 4 * math.sqrt(2 / 9 / stayed), (sum(moved), stayed)
            # 3. rollback is one state change: the champion alone within a few seconds
            off = time.monotonic()
            clear_rollout(root, 'guardrail: error rate')
            wait_for(lambda: meta()['live_rollout']['status'] == 'off', 'the rollout is off')
            time.sleep(1)
            after = time.monotonic()
            last_challenger = max(s for s, _, mdl in list(traffic.seen) if mdl == challenger)
            assert last_challenger - off < 5, last_challenger - off
            wait_for(lambda: len(traffic.since(after)) >= 200, '200 rows after the rollback')
            assert {mdl for _, mdl in traffic.since(after)} == {champion}
            # 4. a challenger trained with other feature code is refused live: deploy a new Bento; the champion answers alone
            set_rollout(root, other, 0.5, 'new features')
            m = wait_for(lambda: (lambda d: d if d['live_rollout']['status'] == 'deploy a new Bento' else None)(meta()),
                         'the refusal of a challenger with other feature code')
            assert 'other exported feature code' in m['live_rollout']['message'] and m['live_rollout']['challenger'] is None
            refused = time.monotonic()
            # 5. a challenger that is not in the model store: logged, the champion answers alone
            set_rollout(root, 'churn:nosuchversion1', 0.5, 'a typo')
            m = wait_for(lambda: (lambda d: d if d['live_rollout']['status'] == 'failed' else None)(meta()), 'a challenger not found')
            assert 'churn:nosuchversion1 is not in the model store' in m['live_rollout']['message']
            wait_for(lambda: len(traffic.since(refused)) >= 200, '200 rows after the refusal')
            assert {mdl for _, mdl in traffic.since(refused)} == {champion}
        assert traffic.failed == [], traffic.failed[:5]  # not one request failed through five state changes
        assert len(traffic.seen) >= 2400  # at least the rows waited for above (2000 at stage 0.25, 200 after the rollback, 200 after the refusal), all answered
        out = srv.output()
    assert f'challenger {other} cannot be swapped in live' in out and 'Deploy a new Bento' in out, out[-3000:]
    assert 'churn:nosuchversion1 is not in the model store' in out, out[-3000:]
    # the prediction log says which variant answered each row, as a canary built into a Bento does
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert {(l['variant'], l['model']) for l in lines} == {('champion', champion), ('challenger', challenger)}
    # so `mlnb monitor` compares the variants, as for a canary built in
    res = mlnb('monitor', '--json', '--model', champion, '--log', log, '--last', len(lines), cwd=root, env=env, check=False)
    assert res.returncode in (0, 1) and res.stdout.startswith('{'), (res.returncode, res.stdout[:500], res.stderr[-2000:])
    v = json.loads(res.stdout)['variants']
    assert (v['challenger'], v['mode']) == (challenger, 'canary/ab')
    assert v['variants']['challenger']['rows'] == sum(l['variant'] == 'challenger' for l in lines) > 500


def test_a_rollout_set_on_one_machine_reaches_the_teams_server_on_another(scaffold_template, postgres, s3_server, tmp_path):
    "With a team's store: `mlnb flag rollout` on machine A; `mlnb serve` on machine B fetches the challenger from S3 and its service follows."
    import os, signal, subprocess
    from conftest import MLNB, git_snapshot
    from mlnb.server import free_port
    from test_two_machines import both_stores, clone, machine
    root = tmp_path / 'a' / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    both_stores(root, postgres, s3_server, 'live')
    git_snapshot(root)
    a = machine(root, tmp_path / 'a' / 'bentoml', postgres, s3_server)
    mlnb('store', 'upgrade', cwd=root, env=a['env'])
    mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root, env=a['env'])
    bento = mlnb('build', cwd=root, env=a['env']).stdout.split()[1].rstrip('.')
    champion = tags(root, a['env']).pop()
    mlnb('run', '--engine', 'fast', '--profile', 'ci', '--force', '-p', 'n_estimators=20', cwd=root, env=a['env'])
    challenger = (tags(root, a['env']) - {champion}).pop()
    b = clone({'a': a}, 'b', postgres, s3_server, tmp_path)
    home_b = Path(b['env']['BENTOML_HOME'])
    port, err = free_port(), tmp_path / 'serve_b.err'
    with open(err, 'wb') as f:  # B serves the team's latest build, fetched from S3
        proc = subprocess.Popen([MLNB, 'serve', '--port', str(port)], cwd=b['root'], env={**os.environ, **b['env']},
                                stdout=subprocess.DEVNULL, stderr=f)
    url = f'http://127.0.0.1:{port}'
    try:
        wait_serving(url, proc, err, 'mlnb serve on machine B')
        name, version = challenger.split(':')
        assert not (home_b / 'models' / name / version).exists()  # B has the Bento's champion only
        mlnb('flag', 'rollout', 'on', '--challenger', challenger, '--stage', '1', '--reason', 'from A', cwd=root, env=a['env'])
        m = wait_for(lambda: (lambda d: d if d['live_rollout']['status'] == 'serving' else None)(httpx.get(url + '/metadata').json()),
                     "B's service serving the challenger set on A", timeout=60)
        assert (m['live_rollout']['challenger'], m['live_rollout']['stage'], m['live_rollout']['state']['reason']) == (challenger, 1, 'from A')
        assert (home_b / 'models' / name / version / 'model.yaml').is_file()  # fetched from the team's store before the file named it
        rows = request_rows_b(root)
        assert {a_['model'] for a_ in httpx.post(url + '/predict', json={'rows': rows}, timeout=60).json()} == {challenger}
        mlnb('flag', 'rollout', 'off', '--reason', 'rollback from A', cwd=root, env=a['env'])
        wait_for(lambda: httpx.get(url + '/metadata').json()['live_rollout']['status'] == 'off', "B's service back to the champion alone")
        assert {a_['model'] for a_ in httpx.post(url + '/predict', json={'rows': rows}, timeout=60).json()} == {champion}
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(60)
        except subprocess.TimeoutExpired: proc.kill()
    assert 'flags from the store written' in err.read_text(), err.read_text()[-3000:]


def request_rows_b(root):
    "Twenty request rows of the churn project at `root`."
    import sys
    sys.path.insert(0, str(root))
    try:
        from churn.data import simulate
        return request_rows(simulate(20, seed=7), 'churned')
    finally: sys.path.remove(str(root))
