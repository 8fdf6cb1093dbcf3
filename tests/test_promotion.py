"""Crash-safe promotion: `mlnb run` killed (SIGKILL) at any moment never moves the champion, and never loses a decision."""
import json, os, random, signal, sqlite3, subprocess, time
from pathlib import Path

import pytest

from conftest import MLNB, mlnb, step_notebook as _notebook

WORSE = ['-p', 'n_estimators=3', '-p', 'max_depth=2']


def _db(root):
    db = sqlite3.connect(Path(root) / '.mlnb' / 'ledger.db', timeout=30)
    db.row_factory = sqlite3.Row
    return db


def _wait_for(root, sql, args=(), timeout=300, proc=None):
    "Poll the ledger until `sql` returns a row; returns it."
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (Path(root) / '.mlnb' / 'ledger.db').exists():
            db = _db(root)
            try: row = db.execute(sql, args).fetchone()
            except sqlite3.OperationalError: row = None  # the schema is being created
            finally: db.close()
            if row is not None: return row
        if proc is not None and proc.poll() is not None:
            pytest.fail(f'mlnb run ended (exit {proc.returncode}) before the ledger showed what the test waits for:\n'
                        f'{proc.stderr.read() if proc.stderr else ""}')
        time.sleep(0.002)
    pytest.fail(f'timed out waiting for: {sql}')


def _kill(proc):
    "SIGKILL the mlnb process, then whatever it started (its session)."
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try: os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError: pass


def _champion(root, model):
    db = _db(root)
    try:
        r = db.execute('select tag from champions where model=? order by seq desc limit 1', (model,)).fetchone()
        return r['tag'] if r else None
    finally: db.close()


def test_kill_after_the_gate_decided_changes_nothing_and_the_next_run_decides_again(project, fresh_store):
    # a slow step after evaluate: the run is killed while it runs, after evaluate recorded "promote"
    _notebook(project / 'nbs' / '05_report.ipynb', 'pause = 60.0\nupstream = None',
              'import time, mlnb\ndecision = mlnb.upstream("evaluate", upstream)["gate"]\ntime.sleep(pause)\n'
              'mlnb.record("reported", decision["candidate"])')
    with open(project / 'pyproject.toml', 'a') as f:
        f.write('\n[tool.mlnb.steps.report]\nnotebook = "nbs/05_report.ipynb"\nneeds = ["evaluate"]\n')
    mlnb('run', '--engine', 'fast', '-p', 'report.pause=0', *WORSE, cwd=project)
    weak = _champion(project, 'churn')
    assert weak is not None

    proc = subprocess.Popen([MLNB, 'run', '--engine', 'fast'], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        gate = _wait_for(project, "select g.run_id, g.candidate, g.promote from gates g join steps s on s.run_id = g.run_id "
                                  "where g.status='pending' and s.step='report' and s.status='running'", proc=proc)
    finally: _kill(proc)
    assert gate['promote'] == 1, 'the better model should have been decided for promotion before the kill'
    killed, candidate = gate['run_id'], gate['candidate']

    assert _champion(project, 'churn') == weak  # the killed run changed nothing
    runs = json.loads(mlnb('runs', '--json', cwd=project).stdout)
    assert runs[0]['id'] == killed and runs[0]['status'] == 'killed'
    shown = json.loads(mlnb('show', killed, '--json', cwd=project).stdout)
    (g,) = shown['gates']
    assert (g['candidate'], g['promote'], g['status'], g['applied']) == (candidate, True, 'abandoned', False)
    assert 'killed' in g['outcome']
    assert 'abandoned' in mlnb('show', killed, cwd=project).stdout
    assert {s['step']: s['status'] for s in shown['steps']}['report'] == 'killed'

    # the next run evaluates again (the killed run's decision is not reused from the cache) and promotes
    res = mlnb('run', '--engine', 'fast', '-p', 'report.pause=0', cwd=project)
    last = json.loads(mlnb('runs', '--json', cwd=project).stdout)[0]
    steps = {s['step']: s['status'] for s in json.loads(mlnb('show', last['id'], '--json', cwd=project).stdout)['steps']}
    assert steps == {'data': 'cached', 'features': 'cached', 'train': 'cached', 'evaluate': 'ok', 'report': 'ok'}
    assert f'gate: {candidate}: ' in res.stdout and '(now the champion)' in res.stdout
    assert _champion(project, 'churn') == candidate
    assert [g['status'] for g in last['gates']] == ['applied']
    hist = json.loads(mlnb('history', 'churn', '--json', cwd=project).stdout)
    assert [(h['kind'], h['previous'], h['tag'], h['run_id']) for h in hist] == [
        ('gate', None, weak, hist[0]['run_id']), ('gate', weak, candidate, last['id'])]


def test_kills_at_random_moments_around_the_end_of_a_run_keep_the_invariant(tmp_path):
    "A tiny project whose gate always promotes; each run is killed 0-50 ms after evaluate finished."
    root = tmp_path / 'tiny'
    (root / 'nbs').mkdir(parents=True)
    _notebook(root / 'nbs' / 'evaluate.ipynb', 'score = 0',
              'import mlnb\ncurrent = mlnb.champion("m")\n'
              'mlnb.gate("m", candidate=f"m:v{score}", metrics={"score": float(score)},\n'
              '          champion_metrics={"score": float(current.split(":v")[1])} if current else None, champion_tag=current)')
    _notebook(root / 'nbs' / 'report.ipynb', 'pause = 0.0\nupstream = None', 'import time, mlnb\ntime.sleep(pause)\nmlnb.record("done", True)')
    (root / 'pyproject.toml').write_text(
        '[project]\nname = "tiny"\n[tool.nbdev]\nlib_path = "tiny"\n'
        '[tool.mlnb.steps.evaluate]\nnotebook = "nbs/evaluate.ipynb"\n'
        '[tool.mlnb.steps.report]\nnotebook = "nbs/report.ipynb"\nneeds = ["evaluate"]\n'
        '[tool.mlnb.gate]\nmetric = "score"\n')
    from mlnb.ledger import Ledger
    rng, outcomes = random.Random(7), []
    for i in range(1, 9):
        before = _champion(root, 'm') if (root / '.mlnb' / 'ledger.db').exists() else None
        # odd runs: killed 0-50 ms after evaluate finished, while the report step sleeps (surely inside the window);
        # even runs: killed 0-50 ms after the last step finished, around the run's last transaction
        step, pause = ('evaluate', 0.15) if i % 2 else ('report', 0.0)
        proc = subprocess.Popen([MLNB, 'run', '--engine', 'fast', '-p', f'score={i}', '-p', f'pause={pause}'], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            run_id = _wait_for(root, "select r.id from runs r join steps s on s.run_id = r.id where r.pid=? and s.step=? "
                                     "and s.status='ok'", (proc.pid, step), proc=proc)['id']
            time.sleep(rng.uniform(0, 0.05))
        finally: _kill(proc)
        led = Ledger(root)
        try:
            led.reap()
            run, gates = led.get_run(run_id), led.gates(run_id)
        finally: led.close()
        after = _champion(root, 'm')
        assert run['status'] in ('ok', 'killed'), run['status']
        assert [g['candidate'] for g in gates] == [f'm:v{i}'] and gates[0]['promote']
        if run['status'] == 'killed':
            assert gates[0]['status'] == 'abandoned' and not gates[0]['applied']
            assert after == before, f'run {i} was killed, yet the champion moved from {before} to {after}'
        else:
            assert gates[0]['status'] == 'applied' and gates[0]['applied']
            assert after == f'm:v{i}'
        db = _db(root)
        try:
            moves = db.execute('select run_id, tag from champions order by seq').fetchall()
            assert all(db.execute('select status from runs where id=?', (m['run_id'],)).fetchone()['status'] == 'ok' for m in moves)
            assert not db.execute("select 1 from runs where status='running'").fetchone()
        finally: db.close()
        outcomes.append(run['status'])
    assert outcomes.count('killed') >= 4 and 'ok' in outcomes, outcomes
