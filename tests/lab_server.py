"""`mlnb lab` as the browser tests start it: a real JupyterLab server on a free loopback port over a project, with JupyterLab
settings, workspaces and a token of its own (tests/test_lab.py, tests/test_lab_panel.py)."""
import json, os, shutil, signal, socket, subprocess, time
from contextlib import contextmanager
from pathlib import Path

import httpx

from conftest import MLNB

TOKEN = 'mlnb-test-token'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def project_copy(template: Path, base: Path) -> tuple[Path, dict]:
    "A copy of the project `template` under `base` (without its state) and the environment of a model store of its own."
    root = base / template.name
    shutil.copytree(template, root, symlinks=True, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    (base / 'bentoml').mkdir()
    return root, {'BENTOML_HOME': str(base / 'bentoml')}


@contextmanager
def mlnb_lab(root: Path, base: Path, env: dict):
    """`mlnb lab` at `root` (its log and settings under `base`) until the block ends; yields its url, log and seconds to be ready.
    Its kernels import the mlnb under test (PYTHONPATH is its folder alone) and nothing of the project: `mlnb lab` adds the project root itself."""
    import mlnb as under_test
    settings = base / 'lab-settings'
    # every cell in the page (JupyterLab 4 only renders the cells in view by default), and no question about news
    for ext, name, value in [('notebook-extension', 'tracker', {'windowingMode': 'none'}),
                             ('apputils-extension', 'notification', {'fetchNews': 'false', 'checkForUpdates': False})]:
        (settings / f'@jupyterlab/{ext}').mkdir(parents=True, exist_ok=True)
        (settings / f'@jupyterlab/{ext}/{name}.jupyterlab-settings').write_text(json.dumps(value))
    port = free_port()
    full = {**os.environ, **env, 'JUPYTER_TOKEN': TOKEN, 'JUPYTERLAB_SETTINGS_DIR': str(settings),
            'JUPYTERLAB_WORKSPACES_DIR': str(base / 'lab-workspaces')}
    full['PYTHONPATH'] = str(Path(under_test.__file__).resolve().parent.parent)
    log = open(base / 'lab.log', 'w')
    t0 = time.perf_counter()
    proc = subprocess.Popen([MLNB, 'lab', '--port', str(port), '--no-browser'], cwd=root, env=full, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        while True:
            assert proc.poll() is None, (base / 'lab.log').read_text()
            try:
                if httpx.get(f'{url}/api/status', params={'token': TOKEN}, timeout=2).status_code == 200: break
            except httpx.HTTPError: pass
            assert time.perf_counter() - t0 < 60, 'mlnb lab was not ready in 60 s'
            time.sleep(0.2)
        yield {'url': url, 'log': base / 'lab.log', 'ready': time.perf_counter() - t0}
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()
