"""What guards a served model: flags files of any shape never take the service down, only the token's holder writes
ground truth beyond loopback, and concurrent `log_model` calls on one BentoML store all succeed. Real `bentoml serve`,
real `mlnb serve`, real processes."""
import json, os, signal, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import MLNB, golden, mlnb, run, train_and_build

TOKEN = 'tok-' + 'Zq8xW2' * 6  # what no log may ever show


@pytest.fixture(scope='module')
def guarded(scaffold_template, tmp_path_factory):
    "The scaffolded churn project (with its fallback), trained and built once, with a model store of its own."
    root = tmp_path_factory.mktemp('guarded') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    root, env, bento = train_and_build(root, tmp_path_factory.mktemp('guarded_home'))
    champion, gold = golden(root, env)
    return root, env, bento, champion, gold['rows']


def model_processes(srv):
    "The pids of the server's model processes (their command line names the Bento in the server's own BentoML home)."
    out = set()
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
        try: cmd = cmdline.read_bytes()
        except OSError: continue
        if b'model_process' in cmd and srv.home.encode() in cmd: out.add(int(cmdline.parent.name))
    return out


def wait_for(check, what, timeout=30, show=lambda: ''):
    "Poll `check()` until it is true; fail naming `what` (and what `show()` says) after `timeout` seconds."
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check(): return
        time.sleep(0.1)
    pytest.fail(f'{what} did not happen within {timeout} s\n{show()}')


def replace(path, data: bytes):
    "Write `data` to `path` beside it and rename it into place (a reader never sees half of it)."
    tmp = path.with_name('.fuzz-tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)


GOOD = lambda on: json.dumps({'fallback': {'on': on, 'reason': 'fuzz', 'at': '2026-12-05T10:00:00Z', 'by': 'ci'}}).encode()
BAD = [b'{"fallback": true}', b'[]', b'null', b'', b'  \n', b'{', b'"fallback"', b'42', b'{"fallback": []}', b'{"fallback": {}}',
       b'{"fallback": {"on": "true"}}', b'{"fallback": {"on": 1}}', b'{"fallback": {"on": null}}', b'{"fallback": {"on": NaN}}',
       b'{"fallback": {"on": true, "extra": 1}}', b'{"fallback": {"on": true, "reason": 7}}', b'{"": {"on": true}}',
       b'{"fallback": {"on": true}, "x y": {"on": false}}', b'\xff\xfe\x00{', b'[' * 50_000, b'{"a":' * 20_000,
       json.dumps({'fallback': {'on': True, 'reason': 'x' * 70_000}}).encode(), b' ' * 70_000,
       *[GOOD(True)[:n] for n in (1, 10, 25, len(GOOD(True)) - 1)]]


def test_flags_files_of_any_shape_never_take_the_service_down(guarded, tmp_path):
    from mlnb.server import Server
    from mlnb.serving import parse_flags
    root, env, bento, champion, rows = guarded
    flags = tmp_path / 'flags.json'
    with Server(bento, log_path=tmp_path / 'predictions.jsonl', env=env, flags=flags) as srv:
        procs = model_processes(srv)
        assert len(procs) >= 1
        seen, stop = [], threading.Event()
        def load(i):
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    r = c.post(srv.url + '/predict', json={'rows': [rows[i % len(rows)]]}) if i % 2 else c.get(srv.url + '/metadata')
                    seen.append(r.status_code)
                    i += 2
                    time.sleep(0.01)
        threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
        for t in threads: t.start()
        def answered_by():
            r = httpx.post(srv.url + '/predict', json={'rows': [rows[0]]}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()[0]['model']
        def follows(on):
            "The service says, and does, what the last good file said."
            meta = httpx.get(srv.url + '/metadata', timeout=60).json()['fallback']
            return meta['flag'] is on and answered_by() == ('fallback' if on else champion)
        try:
            last, refused = False, 0
            for i, bad in enumerate(BAD):
                if i % 4 == 0: # a good file now and then: the service follows it
                    last = not last
                    replace(flags, GOOD(last))
                    wait_for(lambda: follows(last), f'following a good flags file (on: {last})')
                with pytest.raises(ValueError) as why:
                    parse_flags(bad)
                start = len(srv.output())
                replace(flags, bad)
                line = f'the flags file {flags} is refused: {why.value}'
                wait_for(lambda: line in srv.output()[start:], f'the refusal of {bad[:40]!r}')
                refused += 1
                assert follows(last), f'after {bad[:40]!r} the service did not keep the last good flags (on: {last})'
            # a file written in place, seen half written: refused, then followed once whole
            last = not last
            whole = GOOD(last)
            with open(flags, 'wb') as f:
                f.write(whole[:20]); f.flush()
                start = len(srv.output())
                wait_for(lambda: f'the flags file {flags} is refused: it is not JSON' in srv.output()[start:], 'the refusal of a half-written file')
                assert follows(not last)
                f.write(whole[20:])
            wait_for(lambda: follows(last), 'following the file once whole')
            # neither a folder, a FIFO nor a device in its place holds up or takes down the service
            def good(on): # each a change of state, so that following it shows the service read it
                replace(flags, GOOD(on))
                wait_for(lambda: follows(on), f'following a good flags file (on: {on})')
            def refuses_a_non_file(make, on):
                start = len(srv.output())
                make()
                wait_for(lambda: f'the flags file {flags} is refused: it cannot be read' in srv.output()[start:], 'the refusal of a file that is not a file',
                         show=lambda: srv.output()[-3000:])
                assert follows(on)
            special = tmp_path / 'special'
            good(True), good(False)
            refuses_a_non_file(lambda: (flags.unlink(), flags.mkdir()), False) # (deleted for a moment: every flag off, as the file said)
            flags.rmdir()
            good(True)
            refuses_a_non_file(lambda: (os.mkfifo(special), os.replace(special, flags)), True)
            good(False)
            refuses_a_non_file(lambda: (special.symlink_to('/dev/zero'), os.replace(special, flags)), False)
            good(True)
            flags.unlink()
            wait_for(lambda: follows(False), 'every flag off once the file is deleted')
            # `mlnb flag` says what is wrong, and rewrites the file
            replace(flags, b'{"fallback": true}')
            shown = mlnb('flag', '--file', flags, cwd=root, env=env, check=False)
            assert shown.returncode == 2 and "is not what `mlnb flag` writes: flag 'fallback' is true, not an object" in shown.stderr, shown
            assert 'Traceback' not in shown.stderr
            fixed = mlnb('flag', 'fallback', 'on', '--file', flags, '--reason', 'fixing', cwd=root, env=env)
            assert 'Replacing it with a valid file' in fixed.stderr
            wait_for(lambda: follows(True), 'following the file `mlnb flag` rewrote')
            assert parse_flags(flags.read_bytes())['fallback']['on'] is True
        finally:
            stop.set()
            for t in threads: t.join()
        output = srv.output()
        assert model_processes(srv) == procs, 'the model process was restarted'
    assert seen and all(s == 200 for s in seen), sorted(set(seen))
    assert len(seen) > 100
    assert 'the model process stopped' not in output and 'Traceback' not in output, output[-3000:]
    assert output.count(f'the flags file {flags} is refused') >= refused + 4


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=12)
flag_like = st.dictionaries(st.sampled_from(['fallback', 'other', '', 'a b', 'rollout']), st.dictionaries(
    st.sampled_from(['on', 'reason', 'at', 'by', 'of', 'challenger', 'stage', 'id']), json_values | st.sampled_from(['shadow', 'churn:v2', 0.25, 1, 0]),
    max_size=7) | json_values, max_size=3)


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(doc=st.one_of(json_values, flag_like).map(lambda d: json.dumps(d).encode()) | st.binary(max_size=64))
def test_the_flags_check_refuses_in_words_or_returns_valid_flags(doc):
    from mlnb.serving import Flag, parse_flags
    try: flags = parse_flags(doc)
    except ValueError as e: assert str(e) and '\n' not in str(e)
    else: assert all(isinstance(f, dict) and type(f['on']) is bool for f in flags.values())
    path = Path(tempfile.gettempdir()) / f'mlnb-flags-{os.getpid()}.json'
    path.write_bytes(doc)
    try: assert isinstance(Flag(path, every=0).on('fallback'), bool) # never raises, whatever the file holds
    finally: path.unlink()


def test_only_the_token_holder_writes_ground_truth_beyond_loopback(guarded, tmp_path):
    from mlnb.server import Server, free_port
    root, env, bento, champion, rows = guarded
    clean = {k: v for k, v in os.environ.items() if k not in ('MLNB_TOKEN', 'MLNB_INSECURE')}
    port = free_port('0.0.0.0')
    res = subprocess.run([MLNB, 'serve', '--host', '0.0.0.0', '--port', str(port)], cwd=root, env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and 'MLNB_TOKEN' in res.stderr and '--insecure' in res.stderr, res
    feedback = lambda url, rid, **headers: httpx.post(url + '/feedback', json={'feedback': [{'request_id': rid, 'label': 1}]},
                                                      headers=headers, timeout=60)

    def mlnb_serve(extra_env, *args):
        "`mlnb serve --host 0.0.0.0` on a free port, until its block ends; yields its URL over loopback and its output file."
        port, out = free_port('0.0.0.0'), tmp_path / f'serve-{len(list(tmp_path.glob("serve-*")))}.txt'
        with out.open('w') as f:
            proc = subprocess.Popen([MLNB, 'serve', '--host', '0.0.0.0', '--port', str(port), *args], cwd=root,
                                    env={**clean, **env, **extra_env}, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        url = f'http://127.0.0.1:{port}'
        def ready():
            assert proc.poll() is None, out.read_text()[-3000:]
            try: return httpx.get(url + '/readyz', timeout=1).status_code == 200
            except httpx.HTTPError: return False
        wait_for(ready, '`mlnb serve` ready', timeout=120)
        return proc, url, out

    proc, url, out = mlnb_serve({'MLNB_TOKEN': TOKEN})
    try:
        answer = httpx.post(url + '/predict', json={'rows': rows[:2]}, timeout=60)
        assert answer.status_code == 200  # /predict is not protected by default
        rid = answer.json()[0]['request_id']
        r = feedback(url, rid)
        assert r.status_code == 401 and r.headers['www-authenticate'].startswith('Bearer') and 'Authorization: Bearer' in r.json()['error']
        r = feedback(url, rid, authorization='Bearer ' + TOKEN[:-1] + 'x')
        assert r.status_code == 401 and 'invalid_token' in r.headers['www-authenticate'], r.text
        assert feedback(url, rid, authorization='Basic ' + TOKEN).status_code == 401
        r = feedback(url, rid, authorization='Bearer ' + TOKEN)
        assert r.status_code == 200 and r.json() == {'received': 1}, r.text
        r = feedback(url, ' \t ', authorization='Bearer ' + TOKEN)
        assert r.status_code == 400 and "item 0, field 'request_id'" in r.json()['error'], r.text
        doc = httpx.get(url + '/docs.json', timeout=60).json()
        post = doc['paths']['/feedback']['post']
        assert post['security'] == [{'bearer': []}] and post['requestBody']['required'] is True and '401' in post['responses']
        assert (doc['components']['securitySchemes']['bearer']['type'], doc['components']['securitySchemes']['bearer']['scheme']) == ('http', 'bearer')
        assert doc['paths']['/predict']['post']['requestBody']['required'] is True and 'security' not in doc['paths']['/predict']['post']
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    logs = [out, *sorted((root / '.mlnb').rglob('*.jsonl'))]
    assert any(p.name.endswith('feedback.jsonl') and rid in p.read_text() for p in logs)  # the one accepted piece of ground truth
    assert not [str(p) for p in logs if TOKEN in p.read_text(errors='replace')], 'the token is in a log'
    assert not [str(p) for p in (root / '.mlnb').rglob('*') if p.is_file() and TOKEN.encode() in p.read_bytes()]

    proc, url, out = mlnb_serve({}, '--insecure')
    try: assert feedback(url, 'r-insecure').status_code == 200  # told to: open
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)

    # `bentoml serve` on every interface, without mlnb serve and without a token: nobody may write
    with Server(bento, host='0.0.0.0', env={**env, 'MLNB_TOKEN': '', 'MLNB_INSECURE': ''}, log_path=tmp_path / 'direct.jsonl') as srv:
        url = f'http://127.0.0.1:{srv.port}'
        r = feedback(url, 'r-1')
        assert r.status_code == 403 and 'MLNB_TOKEN' in r.json()['error'], r.text
        assert httpx.post(url + '/predict', json={'rows': rows[:1]}, timeout=60).status_code == 200
        assert feedback(url, 'r-1', **{'x-forwarded-for': '203.0.113.9'}).status_code == 403
    # on loopback, a proxy's request still needs the token, and `/predict` can be protected by configuration
    text = (root / 'pyproject.toml').read_text()
    (root / 'pyproject.toml').write_text(text.replace('[tool.mlnb.serve]\n', '[tool.mlnb.serve]\nprotect = ["/feedback", "/predict"]\n', 1))
    try: protected = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    finally: (root / 'pyproject.toml').write_text(text)
    with Server(protected, env={**env, 'MLNB_TOKEN': TOKEN}, log_path=tmp_path / 'protected.jsonl') as srv:
        assert httpx.post(srv.url + '/predict', json={'rows': rows[:1]}, timeout=60).status_code == 200  # loopback: open
        proxied = {'x-forwarded-for': '203.0.113.9'}
        assert httpx.post(srv.url + '/predict', json={'rows': rows[:1]}, headers=proxied, timeout=60).status_code == 401
        ok = httpx.post(srv.url + '/predict', json={'rows': rows[:1]}, headers={**proxied, 'authorization': 'Bearer ' + TOKEN}, timeout=60)
        assert ok.status_code == 200 and ok.json()[0]['model'] == champion
        assert feedback(srv.url, 'r-2', **proxied).status_code == 401
        assert TOKEN not in srv.output()
    assert TOKEN not in (tmp_path / 'protected.jsonl').read_text()


WRITER = '''
import os, sys, time
from pathlib import Path
from sklearn.linear_model import LogisticRegression
import mlnb
go, n, slow = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == 'slow'
class Slow(LogisticRegression):
    def __getstate__(self):
        time.sleep(60)  # killed while this is being saved
        return super().__getstate__()
import mlnb.registry, bentoml.sklearn # everything a save needs, before the start
(go.parent / f'ready-{os.getpid()}').touch()
while not go.exists(): time.sleep(0.005)
for i in range(n):
    model = (Slow if slow else LogisticRegression)().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    print(mlnb.log_model(model, 'slow' if slow else 'demo', metrics={'i': float(i)}), flush=True)
'''

READER = '''
import json, bentoml
from pathlib import Path
models = bentoml.models.list()
print(json.dumps({'tags': sorted(str(m.tag) for m in models), 'latest': str(bentoml.models.get('demo').tag),
                  'newest': str(max(models, key=lambda m: m.info.creation_time).tag),
                  'loads': [bentoml.sklearn.load_model(m.tag).predict([[3.0]]).tolist() for m in models]}))
'''


@pytest.fixture
def tiny(tmp_path):
    "A folder that is an mlnb project (for `log_model` outside a run) and a model store of its own."
    (tmp_path / 'proj').mkdir()
    (tmp_path / 'proj' / 'pyproject.toml').write_text('[tool.nbdev]\nlib_path = "demo"\n')
    return {'MLNB_PROJECT_ROOT': str(tmp_path / 'proj'), 'BENTOML_HOME': str(tmp_path / 'home')}


def test_concurrent_log_model_calls_on_one_store_all_succeed(tiny, tmp_path):
    go = tmp_path / 'go'
    env = {**os.environ, **tiny}
    writers = [subprocess.Popen([sys.executable, '-c', WRITER, str(go), '3', 'fast'], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    wait_for(lambda: len(list(tmp_path.glob('ready-*'))) == 8 or any(w.poll() for w in writers), 'eight writers ready', timeout=300)
    go.touch()  # all at once
    done = [w.communicate(timeout=600) for w in writers]
    failed = [err[-2000:] for w, (_, err) in zip(writers, done) if w.returncode != 0]
    assert not failed, f'{len(failed)} of 8 writers failed:\n' + '\n'.join(failed)
    tags = sorted(t for out, _ in done for t in out.split())
    assert len(tags) == 24 == len(set(tags))
    got = json.loads(run([sys.executable, '-c', READER], tmp_path, env=tiny).stdout)
    assert got['tags'] == tags and got['loads'] == [[1]] * 24  # every model is whole and loads
    assert got['latest'] == got['newest']
    store = Path(tiny['BENTOML_HOME'])
    assert list((store / '.mlnb-staging').iterdir()) == []
    assert all((d / 'model.yaml').is_file() for d in (store / 'models' / 'demo').iterdir() if d.is_dir())


def test_a_writer_killed_while_saving_leaves_nothing_half_registered(tiny, tmp_path):
    import fcntl
    go = tmp_path / 'go'
    go.touch()
    env = {**os.environ, **tiny, 'TMPDIR': str(tmp_path)}  # where BentoML's own temporary folder of the killed save stays
    writer = subprocess.Popen([sys.executable, '-c', WRITER, str(go), '1', 'slow'], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = Path(tiny['BENTOML_HOME']) / '.mlnb-staging'
    wait_for(lambda: staging.is_dir() and any(staging.glob('*.lock')), 'the writer saving', timeout=120)
    time.sleep(1)
    writer.kill()
    writer.wait()
    assert not (Path(tiny['BENTOML_HOME']) / 'models' / 'slow').exists()
    with open(Path(tiny['BENTOML_HOME']) / 'models' / '.mlnb.lock', 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not held by the dead writer
        fcntl.flock(lock, fcntl.LOCK_UN)
    res = run([sys.executable, '-c', WRITER, str(go), '1', 'fast'], tmp_path, env=tiny)
    assert res.stdout.startswith('demo:')
    assert list(staging.iterdir()) == []  # the dead writer's folder is gone
    got = json.loads(run([sys.executable, '-c', READER], tmp_path, env=tiny).stdout)
    assert got['tags'] == [res.stdout.strip()] and got['loads'] == [[1]]
