"""A challenger trained with other exported feature code cannot be swapped in live: `mlnb loop` builds the Bento of the champion and the
challenger and stops at "deploy this Bento" (recorded, alerted, in `mlnb loop status`), builds nothing more on later passes, and goes on
once the service runs it; `mlnb serve --swappable` takes that Bento (`mlnb serve --swap TAG`) under continuous traffic with not one failed
request, and answers from the new Bento after the swap. The project is a copy of the `live` fixture of conftest.py (its `other` model), which tests/test_live_rollout.py uses too."""
import json, os, shutil, signal, subprocess, sys, time

import httpx
import pytest

from conftest import MLNB, mlnb
from test_live_rollout import Traffic, wait_for, wait_serving
from test_monitor import request_rows

ALERTS = 'alerts.jsonl'


def builds(root):
    from mlnb.ledger import Ledger
    led = Ledger(root)
    try: return [r['bento'] for r in led.db.all('select bento from builds order by seq')]
    finally: led.close()


def loop(root, env):
    return json.loads(mlnb('loop', '--json', cwd=root, env=env).stdout)


def status(root, env):
    return json.loads(mlnb('loop', 'status', '--json', cwd=root, env=env).stdout)


def test_the_loop_stops_at_deploy_this_bento_and_serve_swaps_it_in_with_no_failed_request(live, tmp_path):
    from mlnb.flags import set_rollout
    from mlnb.server import free_port
    shared, env, old, champion, challenger, other = live
    root = shutil.copytree(shared, tmp_path / 'churn', ignore=shutil.ignore_patterns('__pycache__'))  # its ledger, flags and Bento with it
    toml = (root / 'pyproject.toml').read_text()
    assert '[tool.mlnb.alerts]\ncommand = ""' in toml
    (root / 'pyproject.toml').write_text(toml.replace('[tool.mlnb.alerts]\ncommand = ""', f'[tool.mlnb.alerts]\ncommand = "cat >> {ALERTS}; echo >> {ALERTS}"'))
    mlnb('promote', champion, '--reason', 'the Bento built first', cwd=root, env=env)
    # a rollout of `other`, trained after the feature code changed: the loop's first pass builds the Bento of both and stops there
    rid = set_rollout(root, other, 0.5, 'new features')['id']
    first = loop(root, env)
    assert first['action'] == 'deploy', first
    ev = first['evidence']
    new = ev['bento']
    assert new != old and ev['served_bento'] == old and ev['served_code'] != ev['challenger_code'], ev
    assert ev['verify']['ok'] and ev['verify']['rows'] > 0, ev['verify']  # both models' golden rows answer as in their notebooks
    assert ev['command'] == f'mlnb serve --swappable --bento {new}'  # no `mlnb serve` runs yet
    assert f'Deploy this Bento: {new}' in first['reason'] and ev['challenger_code'][:12] in first['reason'], first['reason']
    assert builds(root)[-1] == new
    sent = lambda: [json.loads(l) for l in (root / ALERTS).read_text().splitlines() if l.strip()]
    assert [(a['kind'], a['action'], a['evidence']['bento']) for a in sent()] == [('loop', 'deploy', new)], sent()
    assert 'deploy' in mlnb('history', 'churn', cwd=root, env=env).stdout
    s = status(root, env)
    assert s['rolling_out'] and s['deploy']['bento'] == new and not s['deploy']['deployed'], s['deploy']
    text = mlnb('loop', 'status', cwd=root, env=env).stdout
    assert f'Deploy this Bento: {new}; run `mlnb serve --swappable --bento {new}`' in text, text
    # a second pass waits, and builds nothing
    n = len(builds(root))
    second = loop(root, env)
    assert second['action'] == 'wait' and f'waiting for Bento {new} to be deployed' in second['reason'], second
    assert len(builds(root)) == n and len(sent()) == 1  # not alerted again
    # the running service serves the old Bento, which refuses `other`: the champion answers alone
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    err = root / 'serve.err'
    with open(err, 'wb') as f:
        proc = subprocess.Popen([MLNB, 'serve', '--swappable', '--bento', old, '--port', str(port)], cwd=root, env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=f)
    try:
        wait_serving(url, proc, err, 'mlnb serve --swappable')
        meta = lambda: httpx.get(url + '/metadata', timeout=30).json()
        wait_for(lambda: meta()['live_rollout']['status'] == 'deploy a new Bento', 'the old Bento refusing the challenger')
        assert meta()['variants'] == {'champion': champion}
        s = status(root, env)
        assert s['deploy']['command'] == f'mlnb serve --swap {new} --port {port}' and s['deploy']['served_bento'] == old, s['deploy']
        assert loop(root, env)['action'] == 'wait'
        sys.path.insert(0, str(root))
        try:
            from churn.data import simulate
            rows = request_rows(simulate(300, seed=41), 'churned')
        finally: sys.path.remove(str(root))
        with Traffic(url, rows) as traffic:
            wait_for(lambda: len(traffic.seen) >= 300, '300 rows before the swap', timeout=120)
            asked = time.monotonic()
            out = mlnb('serve', '--swap', new, '--port', port, cwd=root, env=env, timeout=600).stdout
            assert f'serves {new}' in out, out
            swapped = time.monotonic()
            wait_for(lambda: any(m == other for _, m in traffic.since(swapped)), 'an answer by the new Bento', timeout=60)
            wait_for(lambda: len(traffic.since(swapped)) >= 300, '300 rows after the swap', timeout=120)
        assert traffic.failed == [], traffic.failed[:5]  # not one request failed during the swap
        before = {m for s_, _, m in traffic.seen if s_ < asked}
        after = {m for _, m in traffic.since(swapped)}
        assert before == {champion} and other in after and after <= {champion, other}, (before, after)
        m = meta()
        assert m['variants'] == {'champion': champion, 'challenger': other}, m['variants']
        assert (m['live_rollout']['status'], m['live_rollout']['challenger'], m['live_rollout']['state']['id']) == ('serving', other, rid)
        # the service runs the new Bento: the loop goes on with the rollout, live
        s = status(root, env)
        assert s['deploy']['deployed'] and s['deploy']['command'] is None, s['deploy']
        third = loop(root, env)
        assert third['action'] not in ('deploy', 'stop') and 'to be deployed' not in third['reason'], third
        assert len(builds(root)) == n
        # a Bento that cannot start is refused, and the one serving goes on
        bad = mlnb('serve', '--swap', 'churn:nosuchbento1', '--port', port, cwd=root, env=env, check=False, timeout=600)
        assert bad.returncode != 0 and 'could not swap in Bento churn:nosuchbento1' in bad.stderr, (bad.stdout, bad.stderr[-2000:])
        assert meta()['variants'] == {'champion': champion, 'challenger': other}
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(90)
        except subprocess.TimeoutExpired: proc.kill()
    assert proc.returncode == 0, err.read_text()[-3000:]
    assert not (root / '.mlnb' / 'serving' / f'{port}.json').exists()  # its record goes with it
    said = err.read_text()
    assert f'serving {new} (swapped in for {old})' in said, said[-3000:]
