"""The served model under kills and stops: real `bentoml serve` and `mlnb serve` on 127.0.0.1, real SIGKILLs and SIGTERMs.

- killed model processes: answered rows = logged rows + rows counted as lost, no line cut, the log still read by `mlnb monitor`;
- any process of the server's tree killed: nothing of it left, the port free;
- SIGTERM or SIGINT to `mlnb serve` under load: every request in flight answered, and its rows logged.
"""
import json, os, random, signal, socket, subprocess, sys, threading, time
from pathlib import Path

import httpx
import pytest

from churn_rows import rows_like
from conftest import MLNB, golden, mlnb, start_server

SETTLE = 10  # seconds a stopped tree has to disappear (it takes about one here; the margin is for a loaded machine)


def _metric(url, name):
    "The sum of a Prometheus metric's samples on the server's /metrics."
    text = httpx.get(url + '/metrics', timeout=30).text
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + ' ') or l.startswith(name + '{'))


def _stat(pid):
    "(parent pid, state, start time) of `pid`, or None when it is gone."
    try: fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError: return None
    return int(fields[1]), fields[0], fields[19]


def _cmdline(pid):
    try: return Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode()
    except OSError: return ''


def _tree(root):
    "{role: pid} of a server's tree under `root` (`mlnb serve` or `bentoml serve`): bentoml serve, worker, model process."
    from mlnb.server import _descendants
    roles = {}
    for pid, _ in _descendants(root):
        cmd = _cmdline(pid)
        if '-m bentoml serve' in cmd: roles['bentoml serve'] = pid
        elif '_bentoml_impl.worker' in cmd: roles['worker'] = pid
        elif 'model_process' in cmd: roles['model process'] = pid
    return roles


def _model_process(root, killed=None, seconds=60):
    "The pid of the model process under `root`, once there is one other than `killed`."
    deadline = time.time() + seconds
    while time.time() < deadline:
        pid = _tree(root).get('model process')
        if pid is not None and pid != killed: return pid
        time.sleep(0.05)
    pytest.fail(f'no model process under {root} within {seconds} s of the last kill')


def _living(family):
    "The processes of `family` ((pid, start time) pairs) still running (not gone, not zombies)."
    out = []
    for pid, started in family:
        st = _stat(pid)
        if st is not None and st[2] == started and st[1] != 'Z': out.append(pid)
    return out


def _wait_gone(family, seconds=SETTLE):
    deadline = time.time() + seconds
    while _living(family) and time.time() < deadline: time.sleep(0.1)
    return _living(family)


def _port_free(port):
    "Whether a new server can bind `port` (as BentoML's arbiter does, reusing addresses)."
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try: s.bind(('127.0.0.1', port))
        except OSError: return False
    return True


def _ready(url, proc=None, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None: pytest.fail(f'the server exited with code {proc.returncode} before it was ready')
        try:
            if httpx.get(url + '/readyz', timeout=1).status_code == 200: return
        except httpx.HTTPError: pass
        time.sleep(0.2)
    pytest.fail('the server never became ready')


def _mlnb_serve(root, env, port):
    proc = subprocess.Popen([MLNB, 'serve', '--port', str(port)], cwd=root, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _ready(f'http://127.0.0.1:{port}', proc)
    return proc


def _family(pid):
    from mlnb.server import _descendants
    st = _stat(pid)
    return _descendants(pid) | ({(pid, st[2])} if st else set())


def _lines(log):
    "Every line of the prediction log `log` and of its rotated files, parsed (a cut line fails the test)."
    files = [log, *sorted(log.parent.glob(f'{log.stem}.2*{log.suffix}'))]
    return [json.loads(l) for f in files if f.exists() for l in f.read_text().splitlines()]


def test_two_writers_one_killed_again_and_again_never_cut_a_line(tmp_path):
    "Two processes append batches of long lines to one log; one is SIGKILLed while it writes, over and over: every line stays whole."
    log = tmp_path / 'p.jsonl'
    script = ('import sys, time\nfrom mlnb.serving.logs import JsonLinesLog\nlog, who, n = JsonLinesLog(sys.argv[1]), sys.argv[2], int(sys.argv[3])\n'
              'batch = "".join(f\'{{"request_id":"{who}-{i}","pad":"{"x" * 3000}"}}\\n\' for i in range(n))\n'
              'print("writing", flush=True)\n'
              'while True:\n'
              '    log.write(batch)\n'
              '    if who == "s": time.sleep(0.01)\n')
    steady = subprocess.Popen([sys.executable, '-c', script, str(log), 's', '20'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kills, cut = 0, 0
    try:
        while kills < 12:  # each killed a few milliseconds into writing 1,000-line batches: often in the middle of one
            victim = subprocess.Popen([sys.executable, '-c', script, str(log), 'k', '1000'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            victim.stdout.readline()
            time.sleep(random.uniform(0, 0.01))
            victim.kill()
            cut += victim.communicate()[1].count('unfinished line')
            kills += 1
    finally:
        steady.kill()
        cut += steady.communicate()[1].count('unfinished line')
    from mlnb.serving.logs import JsonLinesLog
    last = JsonLinesLog(log)  # the next writer: the steady one may have been killed mid-write too
    assert last.write('{"request_id":"t-0","pad":"' + 'x' * 3000 + '"}\n')
    cut += last.cut
    lines = _lines(log)  # every line parses: none was cut, none glued onto another
    print(f'{len(lines)} lines, {kills} kills, {cut} unfinished lines removed')
    assert {l['request_id'][0] for l in lines} == {'s', 'k', 't'} and all(len(l['pad']) == 3000 for l in lines)


def test_killed_model_processes_lose_no_answered_row_silently(served, tmp_path):
    root, env, bento = served
    _, gold = golden(root, env)
    rows = rows_like(gold['rows'], 300)
    log = tmp_path / 'predictions.jsonl'
    answered, statuses, lock, stop = [], {}, threading.Lock(), threading.Event()
    srv = start_server(served, log)
    try:
        def client():
            with httpx.Client(timeout=120) as c:
                while not stop.is_set():
                    r = c.post(srv.url + '/predict', json={'rows': rows})
                    with lock:
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 200: answered.append([a['request_id'] for a in r.json()])
        clients = [threading.Thread(target=client) for _ in range(6)]
        for t in clients: t.start()
        rnd, kills, killed = random.Random(22), 0, None
        while kills < 8:
            model = _model_process(srv.proc.pid, killed)  # answers to requests in flight at a kill may arrive before it is back
            seen = len(answered)
            deadline = time.time() + 60
            while len(answered) < seen + 2 and time.time() < deadline: time.sleep(0.01)  # the new model process answers
            time.sleep(rnd.uniform(0, 0.4))  # anywhere in its cycle: predicting, answering, writing the log
            os.kill(model, signal.SIGKILL)
            kills, killed = kills + 1, model
        deadline = time.time() + 60
        while len(answered) < seen + 4 and time.time() < deadline: time.sleep(0.05)
        stop.set()
        for t in clients: t.join(120)
        events = httpx.get(srv.url + '/metadata', timeout=30).json()['events']  # the model process replies once the log is written
        lost = _metric(srv.url, 'mlnb_log_rows_lost')
        starts = httpx.get(srv.url + '/metadata', timeout=30).json()['model_process']['starts']
    finally:
        srv.stop()
    lines = _lines(log)  # no line is cut
    rows_answered = sum(len(ids) for ids in answered)
    print(f'chaos: {kills} kills, {sum(statuses.values())} requests ({statuses}), {len(answered)} answered with {rows_answered} rows, '
          f'{len(lines)} rows logged, {lost:.0f} counted as lost')
    assert kills == 8 and starts == 9
    assert rows_answered == len(lines) + lost and events['lost'] == lost and events['written'] == len(lines)
    assert {l['request_id'] for l in lines} <= {i for ids in answered for i in ids}  # nothing logged that was not answered
    res = mlnb('monitor', '--log', log, '--last', len(lines), '--json', cwd=root, env=env, check=False)
    assert res.returncode in (0, 1), res.stderr  # the log is read (1: an alert about the data, not about the file)
    assert json.loads(res.stdout)['window']['rows'] == len(lines)


@pytest.mark.parametrize('victim', ['mlnb serve', 'bentoml serve', 'worker', 'model process'])
def test_a_killed_process_of_the_server_leaves_nothing_behind(served, victim):
    "`kill -9` of any process of the tree: nothing of it keeps running or holds the port; a killed worker or model process is replaced."
    from mlnb.server import free_port
    root, env, bento = served
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    proc = _mlnb_serve(root, env, port)
    try:
        roles = {'mlnb serve': proc.pid, **_tree(proc.pid)}
        assert set(roles) == {'mlnb serve', 'bentoml serve', 'worker', 'model process'}, roles
        family = _family(proc.pid)
        if victim == 'worker':  # ground truth answered 2xx is in the feedback log, whatever happens to the worker after
            fb = root / '.mlnb' / 'predictions' / 'churn.feedback.jsonl'
            before = len(fb.read_text().splitlines()) if fb.exists() else 0
            for i in range(20):
                r = httpx.post(url + '/feedback', json={'feedback': [{'request_id': f'kill-{i}-{n}', 'label': n % 2} for n in range(50)]}, timeout=30)
                assert r.status_code == 200
        killed = _family(roles[victim])
        os.kill(roles[victim], signal.SIGKILL)
        if victim in ('mlnb serve', 'bentoml serve'):
            assert _wait_gone(family) == [], f'{victim} killed: still running'
            assert _port_free(port)
            if victim == 'bentoml serve':  # the next `mlnb serve` on that port starts
                again = _mlnb_serve(root, env, port)
                again.send_signal(signal.SIGTERM)
                assert again.wait(60) == 0
        else:
            assert _wait_gone(killed) == [], f'{victim} killed: what it started is still running'
            _, gold = golden(root, env)
            deadline = time.time() + 120
            while time.time() < deadline:  # a new worker (BentoML's arbiter) or model process (the worker) answers
                try:
                    if httpx.post(url + '/predict', json={'rows': gold['rows'][:2]}, timeout=30).status_code == 200: break
                except httpx.HTTPError: pass
                time.sleep(0.2)
            else: pytest.fail(f'{victim} killed: the server never answered again')
            if victim == 'worker':
                kept = [json.loads(l) for l in fb.read_text().splitlines()[before:]]
                assert len(kept) == 1000 and {k['request_id'] for k in kept} == {f'kill-{i}-{n}' for i in range(20) for n in range(50)}
            family = _family(proc.pid)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            assert _wait_gone(family) == [] and _port_free(port)
    finally:
        if proc.poll() is None: proc.kill()


@pytest.mark.parametrize('sig', ['SIGTERM', 'SIGINT'])
def test_mlnb_serve_answers_what_is_in_flight_before_it_stops(served, sig):
    "Under load from 16 clients, a signal to `mlnb serve`: every request in flight is answered and logged, later ones are refused."
    from mlnb.server import free_port
    root, env, bento = served
    log = root / '.mlnb' / 'predictions' / 'churn.jsonl'
    if log.exists(): log.unlink()
    _, gold = golden(root, env)
    rows = rows_like(gold['rows'], 300)
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    proc = _mlnb_serve(root, env, port)
    records, lock = [], threading.Lock()
    def client():
        with httpx.Client(timeout=120) as c:
            while True:
                t0 = time.time()
                try:
                    r = c.post(url + '/predict', json={'rows': rows})
                    out = (r.status_code, [a['request_id'] for a in r.json()] if r.status_code == 200 else r.text)
                except httpx.ConnectError as e: out = ('refused' if 'refused' in str(e) else repr(e), None)
                except httpx.HTTPError as e: out = (repr(e), None)
                with lock: records.append((t0, time.time(), *out))
                if not isinstance(out[0], int): return
    try:
        family = _family(proc.pid)
        clients = [threading.Thread(target=client) for _ in range(16)]
        for t in clients: t.start()
        while len(records) < 32: time.sleep(0.05)
        sent = time.time()
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(60) == 0
        for t in clients: t.join(60)
    finally:
        if proc.poll() is None: proc.kill()
    in_flight = [r for r in records if r[0] < sent < r[1]]
    outcomes = {r[2] for r in records}
    assert len(in_flight) >= 8 and all(r[2] == 200 for r in in_flight), [r[2] for r in in_flight]
    assert outcomes == {200, 'refused'}, outcomes  # no request ended without an answer: a refused connection was never accepted
    logged = {l['request_id'] for l in _lines(log)}
    assert {i for r in records if r[2] == 200 for i in r[3]} <= logged
    assert _wait_gone(family) == [] and _port_free(port)
