"""Warm kernels of the kernel engine: the same notebooks, outputs and fingerprints as a kernel started per step, with
and without `preload`; no step sees another's variables; an interrupted run leaves no kernel behind."""
import json, os, signal, subprocess, time, uuid
from pathlib import Path

import nbformat
import pytest

from conftest import MLNB, mlnb

STEPS = {
    'a': ('x = 1', 'import mlnb, sys\nsecret_a = 41 + x\nprint(sorted(k for k in globals() if not k.startswith("_") and k not in ("In", "Out", "exit", "quit", "get_ipython")), [k for k in globals() if "preload" in k])\nmlnb.record("a", secret_a)'),
    'b': ('upstream = None', 'import mlnb\nprint("secret_a" in globals(), get_ipython().execution_count)\nmlnb.record("b", mlnb.upstream("a", upstream)["a"] * 2)'),
    'c': ('upstream = None', 'import mlnb\nb = mlnb.upstream("b", upstream)["b"]\nb + 1'),
}


def make_project(root: Path, preload=None, slow=None):
    (root / 'nbs').mkdir(parents=True)
    toml = '[project]\nname = "warm"\n[tool.nbdev]\nlib_path = "warm"\n'
    if preload is not None: toml += f'[tool.mlnb]\npreload = {json.dumps(preload)}\n'
    for i, (name, (params, body)) in enumerate(STEPS.items()):
        if slow and name == 'b': body = slow + '\n' + body
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}),
                                             nbformat.v4.new_code_cell(body)])
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(nb, root / 'nbs' / f'{name}.ipynb')
        needs = f'needs = ["{list(STEPS)[i - 1]}"]\n' if i else ''
        toml += f'[tool.mlnb.steps.{name}]\nnotebook = "nbs/{name}.ipynb"\n{needs}'
    (root / 'pyproject.toml').write_text(toml)
    return root


def last_run(root):
    rid = json.loads(mlnb('runs', '--json', cwd=root).stdout)[0]['id']
    return {s['step']: s for s in json.loads(mlnb('show', rid, '--json', cwd=root).stdout)['steps']}


def cells(nb_path):
    "Per code cell: source, execution count and outputs, without timings and the injected run id."
    out = []
    for c in nbformat.read(nb_path, 4).cells:
        if c.cell_type != 'code' or 'injected-parameters' in c.metadata.get('tags', []): continue
        outs = [{k: v for k, v in o.items() if k not in ('metadata',)} for o in c.outputs]
        out.append((c.source, c.execution_count, json.dumps(outs, sort_keys=True)))
    return out


def test_warm_kernels_change_nothing_but_time(tmp_path):
    "Warm kernels (with and without preload) and a kernel started per step (papermill's own engine) give the same run."
    cases = {'warm': (None, 'kernel'), 'preload': (['pandas', 'json', 'no_such_module'], 'kernel'), 'per step': (None, 'nbclient')}
    seen = {}
    for case, (preload, engine) in cases.items():
        root = make_project(tmp_path / case.replace(' ', '_'), preload)
        mlnb('run', '--engine', engine, '--jobs', '2', cwd=root)
        seen[case] = last_run(root)
        assert not list((root / '.mlnb' / 'kernels').glob('*')), 'a waiting kernel left its log behind'
    base = seen['per step']
    for case, steps in seen.items():
        for name in STEPS:
            s, b = steps[name], base[name]
            assert (s['status'], s['fingerprint'], s['outputs']) == ('ok', b['fingerprint'], b['outputs']), (case, name)
            assert cells(s['notebook']) == cells(b['notebook']), (case, name)
    a, b = (cells(seen['preload'][n]['notebook']) for n in 'ab')
    assert "['mlnb', 'mlnb_run', 'open', 'secret_a', 'sys', 'x'] []" in a[1][2], a  # preload left no name behind
    assert '"False 4\\n"' in b[1][2], b  # a fresh kernel: nothing of step a, and counting from 1 (parameters, injected, this)
    assert seen['preload']['c']['outputs'] == {} and '"85"' in cells(seen['preload']['c']['notebook'])[1][2]


def _kernels_of(tag):
    "The pids of processes whose environment holds MLNB_TEST_TAG=tag (the kernels a run started)."
    pids = []
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try: env = (p / 'environ').read_bytes()
        except OSError: continue
        if f'MLNB_TEST_TAG={tag}'.encode() in env.split(b'\0'): pids.append(int(p.name))
    return pids


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_kernel(tmp_path, sig):
    marker = tmp_path / 'started'
    root = make_project(tmp_path / 'p', slow=f'import time\nopen({str(marker)!r}, "w").write("x")\ntime.sleep(120)')
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([MLNB, 'run', '-q'], cwd=root, env={**os.environ, 'MLNB_TEST_TAG': tag},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if marker.exists(): break
            time.sleep(0.1)
        else: pytest.fail('step b never started: ' + proc.communicate(timeout=5)[1][-2000:])
        assert len(_kernels_of(tag)) >= 2  # the run itself, and the kernel running b (c's is warming up)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode != 0
    for _ in range(50):  # a kernel is reaped by its pool before the run exits; allow the kernel's own exit a moment
        left = _kernels_of(tag)
        if not left: break
        time.sleep(0.1)
    assert not left, f'kernels left behind after {sig.name}: {left}\n{err[-2000:]}'
    steps = last_run(root)
    assert steps['a']['status'] == 'ok' and steps['b']['status'] == 'failed', steps
    assert 'KeyboardInterrupt' in json.dumps(steps['b']['error'])
