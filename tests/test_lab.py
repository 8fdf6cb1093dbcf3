"""The data scientist's side, in a real browser: `mlnb lab` on a scaffolded project, every step notebook run by hand through
the JupyterLab UI, an executed run notebook opened (and run again) in JupyterLab, and the run report.

One JupyterLab server and one headless Chromium serve the whole module: they are slow to start.
"""
import json, os, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from browser import chromium
from conftest import mlnb, run
from lab_server import TOKEN, mlnb_lab, project_copy

HAND_STEPS = ['01_data', '02_features', '03_train', '04_evaluate']
PANEL = '.jp-NotebookPanel:not(.lm-mod-hidden)'  # the notebook in view (JupyterLab may restore other tabs)


@pytest.fixture(scope='module')
def lab(scaffold_template, tmp_path_factory):
    "`mlnb lab` on a copy of the scaffolded project, with a model store and JupyterLab user settings of its own."
    base = tmp_path_factory.mktemp('lab')
    root, env = project_copy(scaffold_template, base)
    with mlnb_lab(root, base, env) as srv:
        yield {'root': root, 'url': srv['url'], 'env': env, 'log': srv['log'], 'ready': srv['ready']}


@pytest.fixture(scope='module')
def browser():
    with chromium() as b:
        yield b


def open_notebook(browser, lab, path):
    "A browser tab showing the notebook at `path` (relative to the project root), its kernel started and idle."
    page = browser.new_page(viewport={'width': 1400, 'height': 900})
    # a workspace of its own: JupyterLab would otherwise restore the tabs of the pages before, and "Run All" could go to one of them
    page.goto(f"{lab['url']}/lab/workspaces/{Path(path).stem.replace('_', '-')}/tree/{path}?token={TOKEN}")
    page.wait_for_selector(f'{PANEL} .jp-CodeCell', timeout=90_000)
    page.wait_for_function("() => document.body.innerText.includes('| Idle')", timeout=90_000)
    return page


def run_all(page, timeout=240_000, clear=False, save=True):
    "Run > Run All Cells, wait until every code cell has run (or one failed), and `save` the notebook; `clear` the outputs first."
    if clear:
        page.click('.lm-MenuBar-item:has-text("Edit")')
        page.locator('.lm-Menu-item', has_text='Clear Outputs of All Cells').first.click()
        page.wait_for_function("() => !Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')).some(p => /\\d/.test(p.textContent))")
    started = "() => Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')).some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"
    for attempt in range(4):  # the menu item does nothing until the kernel is ready
        page.click('.lm-MenuBar-item:has-text("Run")')
        page.locator('.lm-Menu-item', has_text='Run All Cells').first.click()
        try:
            page.wait_for_function(started, timeout=15_000)
            break
        except Exception:
            page.keyboard.press('Escape')
    else: raise AssertionError('Run All Cells never started')
    page.wait_for_function("""() => {
        const prompts = Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')).map(p => p.textContent);
        const failed = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"] .ansi-red-fg');
        return prompts.length > 0 && (prompts.every(p => /\\[\\d+\\]/.test(p)) || (failed && !prompts.some(p => p.includes('*'))));
    }""", timeout=timeout)
    if save:
        page.keyboard.press('Control+s')
        page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)


def errors(nb_path):
    "The error outputs of the notebook file, as 'ename: evalue'."
    nb = nbformat.read(nb_path, 4)
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.output_type == 'error']


def stream_text(nb_path):
    nb = nbformat.read(nb_path, 4)
    return ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.output_type == 'stream')


def test_every_step_run_by_hand_in_jupyterlab(lab, browser, tmp_path):
    root = lab['root']
    assert lab['ready'] < 30, lab['ready']
    for name in HAND_STEPS:
        page = open_notebook(browser, lab, f'nbs/{name}.ipynb')
        run_all(page)
        nb_path = root / 'nbs' / f'{name}.ipynb'
        assert errors(nb_path) == [], (name, errors(nb_path))
        code = [c for c in nbformat.read(nb_path, 4).cells if c.cell_type == 'code']
        assert not any(c.execution_count for c in code), name  # the Save was cleaned by nbdev's hook (jupyter_hooks = true)
        if name == '03_train':  # the parameters cell shows the values the pipeline uses and where they come from
            text = page.inner_text(PANEL)
            assert "the parameters of step 'train' as `mlnb run` would use them (this run uses them)" in text, text[-3000:]
            assert 'pyproject.toml [tool.mlnb.steps.train] params' in text and 'WARNING' not in text, text[-3000:]
        if name == HAND_STEPS[-1]:
            page.screenshot(path=str(tmp_path / 'evaluate-by-hand.png'))
        page.close()
    assert (tmp_path / 'evaluate-by-hand.png').stat().st_size > 10_000
    runs = json.loads(mlnb('runs', '--json', cwd=root, env=lab['env']).stdout)
    assert [(r['kind'], r['status'], r['targets']) for r in runs] == [('interactive', 'interactive', [s]) for s in
                                                                     ['evaluate', 'train', 'features', 'data']]
    by_step = {r['targets'][0]: r['id'] for r in runs}
    for step, run_id in by_step.items():  # each hand run's executed copy: every code cell ran, top to bottom
        copy = nbformat.read(root / '.mlnb' / 'runs' / run_id / f'{step}.ipynb', 4)
        counts = [c.execution_count for c in copy.cells if c.cell_type == 'code']
        assert all(counts) and counts == sorted(counts) and copy.metadata.mlnb.run_id == run_id, (step, counts)
    # the evaluate notebook scored the model trained by hand, read from train's hand run, and the gate did not promote it
    evaluate = json.loads(mlnb('show', by_step['evaluate'], '--json', cwd=root, env=lab['env']).stdout)['steps'][0]
    train = json.loads(mlnb('show', by_step['train'], '--json', cwd=root, env=lab['env']).stdout)['steps'][0]
    tag = train['outputs']['model_tag']
    assert evaluate['outputs']['gate']['candidate'] == tag and evaluate['outputs']['gate']['promote'] is False
    assert 'trained in a notebook run by hand' in evaluate['outputs']['gate']['reason']
    assert evaluate['upstream_runs'] == {'data': by_step['data'], 'train': by_step['train']}
    assert f"upstream 'train' is read from hand run {by_step['train']} (nbs/03_train.ipynb)" in stream_text(root / 'nbs' / '04_evaluate.ipynb')
    models = json.loads(mlnb('models', 'churn', '--json', cwd=root, env=lab['env']).stdout)
    assert [m['tag'] for m in models] == [tag] and not models[0]['champion']
    # the hand-trained model's lineage: its hand run, notebook, parameters and the upstream runs it read
    lin = json.loads(mlnb('lineage', tag, '--json', cwd=root, env=lab['env']).stdout)
    assert (lin['interactive'], lin['hand_run'], lin['notebook']) == (True, by_step['train'], 'nbs/03_train.ipynb')
    assert lin['upstream_runs'] == {'data': by_step['data'], 'features': by_step['features']}
    assert lin['step']['params'] == {'n_estimators': 200, 'max_depth': 8, 'seed': 42, 'warm_start': False, 'new_trees': 50, 'max_trees': 500, 'region': None}
    # nothing of this is reused by the pipeline's cache
    res = mlnb('run', '--engine', 'fast', '--explain', cwd=root, env=lab['env'])
    assert 'ok: 4 ok.' in res.stdout and 'data: ran: no earlier successful execution' in res.stdout


def test_run_notebook_in_jupyterlab_and_report_in_browser(lab, browser, tmp_path):
    root, env = lab['root'], lab['env']
    runs = [r for r in json.loads(mlnb('runs', '--json', cwd=root, env=env).stdout) if r['kind'] == 'pipeline']
    if not runs:
        mlnb('run', '--engine', 'fast', cwd=root, env=env)
        runs = [r for r in json.loads(mlnb('runs', '--json', cwd=root, env=env).stdout) if r['kind'] == 'pipeline']
    run_id = runs[0]['id']
    before = json.loads(mlnb('show', run_id, '--json', cwd=root, env=env).stdout)
    # the executed notebook of a run, under the hidden .mlnb/, opens in JupyterLab and shows its outputs
    record = root / '.mlnb' / 'runs' / run_id / 'train.ipynb'
    recorded = record.read_bytes()
    page = open_notebook(browser, lab, f'.mlnb/runs/{run_id}/train.ipynb')
    text = page.inner_text(PANEL)
    assert 'Could not find path' not in page.inner_text('body')
    assert 'mlnb_run' in text and 'trees of depth <= 8' in text
    # a recorded output shows what it is and which artifact file holds it (it used to be a blank output)
    assert 'model: sklearn.pipeline.Pipeline, kept as .mlnb/artifacts/' in text
    page.screenshot(path=str(tmp_path / 'run-notebook.png'))
    # run again by hand: a new hand run of train; the finished run is left as it was, its notebook included (read-only)
    run_all(page, clear=True, save=False)
    assert page.locator(f'{PANEL} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"] .ansi-red-fg').count() == 0
    assert 'trees of depth <= 8' in page.inner_text(PANEL)
    page.keyboard.press('Control+s')
    page.wait_for_selector('text=is read-only', timeout=15_000)
    page.close()
    assert record.read_bytes() == recorded
    after = json.loads(mlnb('show', run_id, '--json', cwd=root, env=env).stdout)
    assert after['steps'] == before['steps'] and after['status'] == 'ok'
    hand = json.loads(mlnb('runs', '--json', cwd=root, env=env).stdout)[0]
    assert (hand['kind'], hand['targets']) == ('interactive', ['train'])
    models = json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout)
    assert models[0]['run_id'] == hand['id'] != run_id
    assert json.loads(mlnb('lineage', models[0]['tag'], '--json', cwd=root, env=env).stdout)['interactive'] is True
    # the report of the run, in the same browser: DAG, plots, gate decision
    out = tmp_path / 'report.html'
    t0 = time.perf_counter()
    mlnb('report', run_id, '--out', out, cwd=root, env=env)
    assert time.perf_counter() - t0 < 10
    tab = browser.new_page(viewport={'width': 1200, 'height': 900})
    tab.goto(out.as_uri())
    charts = tab.evaluate("Array.from(document.querySelectorAll('svg')).filter(s => s.getBoundingClientRect().width > 100).length")
    body = tab.inner_text('body')
    assert charts >= 10, charts  # the DAG and the profile's histograms and bars
    gate = next(g for g in before['gates'])
    assert gate['reason'] in body and 'Gate' in body and 'customers' in body and 'met' in body
    tab.click('text=train.html')
    tab.wait_for_load_state('load')
    assert 'trees of depth' in tab.inner_text('body')
    tab.screenshot(path=str(tmp_path / 'train-notebook.png'))
    tab.close()
    assert (tmp_path / 'train-notebook.png').stat().st_size > 10_000
    # the report inside JupyterLab: its model charts show, and its link to a step notebook opens (200, not 403) in JupyterLab's HTML viewer
    mlnb('report', run_id, cwd=root, env=env)
    page = browser.new_page(viewport={'width': 1400, 'height': 900})
    page.goto(f"{lab['url']}/lab/workspaces/report/tree/.mlnb/runs/{run_id}/report.html?token={TOKEN}")
    viewer = page.frame_locator('.jp-HTMLViewer iframe')
    viewer.locator('figure.model-chart').first.wait_for(timeout=60_000)
    assert viewer.locator('figure.model-chart').count() == 5  # ROC, precision-recall, confusion matrix, calibration, importances
    with page.expect_response(lambda r: r.url.endswith('/report_notebooks/train.html')) as answer:
        viewer.locator('text=train.html').first.click()
    assert answer.value.status == 200, answer.value.status
    page.wait_for_timeout(500)
    assert 'trees of depth' in viewer.locator('body').inner_text()
    page.screenshot(path=str(tmp_path / 'report-in-lab.png'))
    page.close()


def test_package_importable_from_nbs_without_install(scaffold_template):
    "A kernel starts in the notebook's folder: a plain `jupyter lab` finds the package there through nbs/<package>."
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    res = subprocess.run([sys.executable, '-c', 'import churn.features, os; print(os.path.realpath(churn.features.__file__))'],
                         cwd=scaffold_template / 'nbs', env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == (scaffold_template / 'churn' / 'features.py').resolve()
    res = subprocess.run([sys.executable, '-c', 'import churn'], cwd=scaffold_template / 'data', env=env, capture_output=True, text=True)
    assert res.returncode == 1 and 'ModuleNotFoundError' in res.stderr  # elsewhere it is the link that does it


def test_lab_without_jupyterlab_says_how_to_install(scaffold_template):
    code = "import sys; sys.modules['jupyterlab'] = None; from mlnb.cli import main; main()"
    res = run([sys.executable, '-c', code, 'lab'], scaffold_template, check=False)
    assert res.returncode == 2 and 'pip install "mlnb[lab]"' in res.stderr and 'Traceback' not in res.stderr
