"""The mlnb panel in a real JupyterLab (`mlnb lab`) and a real headless Chromium: the steps of the scaffold with their state,
a parameter changed by hand, a step run from the panel, its executed notebook opened, an output table previewed and the two runs compared.

One JupyterLab server over a copy of the scaffold (after `mlnb run --engine fast`) serves the whole module.
"""
import json

import httpx
import nbformat
import pytest

from browser import chromium
from conftest import mlnb
from lab_server import TOKEN, mlnb_lab, project_copy

STEPS = ['data', 'features', 'train', 'evaluate']
PANEL = '#mlnb-panel'
DAG = f'{PANEL} .mlnb-dag svg'
CACHED, STALE = '#388e3c', '#f57c00'  # mlnb.labpanel.STATE_COLORS


@pytest.fixture(scope='module')
def panel_lab(scaffold_template, tmp_path_factory):
    "`mlnb lab` on a copy of the scaffold whose pipeline ran once, with a model store and JupyterLab settings of its own."
    base = tmp_path_factory.mktemp('panel')
    root, env = project_copy(scaffold_template, base)
    mlnb('run', '--engine', 'fast', cwd=root, env=env)
    with mlnb_lab(root, base, env) as srv:
        yield {'root': root, 'url': srv['url'], 'env': env, 'log': srv['log']}


@pytest.fixture(scope='module')
def browser():
    with chromium() as b:
        yield b


def states(page) -> dict:
    "The state the panel shows of each top-level step."
    return page.evaluate(f"""() => Object.fromEntries(Array.from(document.querySelectorAll('{PANEL} > div > ul > li.mlnb-step'))
                                  .map(li => [li.dataset.step, li.dataset.state]))""")


def step(page, name):
    return page.locator(f'{PANEL} li.mlnb-step[data-step="{name}"]').first


def dag_boxes(page) -> dict:
    "The boxes of the DAG drawn at the top of the panel: step -> (its texts, its box's stroke colour)."
    return {k: tuple(v) for k, v in page.eval_on_selector_all(f'{DAG} g.node', """gs => gs.map(g => [g.dataset.node,
        [Array.from(g.querySelectorAll('text')).map(t => t.textContent), g.querySelector('rect').getAttribute('stroke')]])""")}


def wait_states(page, want: dict, timeout=90_000):
    page.wait_for_function(f"""want => {{
        const got = Object.fromEntries(Array.from(document.querySelectorAll('{PANEL} > div > ul > li.mlnb-step')).map(li => [li.dataset.step, li.dataset.state]));
        return Object.entries(want).every(([k, v]) => got[k] === v);
    }}""", arg=want, timeout=timeout)


def test_panel_states_run_executed_notebook_and_preview(panel_lab, browser, tmp_path):
    root, url = panel_lab['root'], panel_lab['url']
    shots = tmp_path / 'screenshots'
    shots.mkdir()
    # the API refuses bad requests with a sentence, never a 5xx
    bad = httpx.post(f'{url}/mlnb/run', params={'token': TOKEN}, content=b'{"targets": "evaluate"}', timeout=10)
    assert bad.status_code == 400 and 'The body must be JSON like' in bad.json()['error']
    bad = httpx.post(f'{url}/mlnb/run', params={'token': TOKEN}, json={'targets': ['evaluat']}, timeout=10)
    assert bad.status_code == 400 and "There is no step 'evaluat'" in bad.json()['error']
    bad = httpx.get(f'{url}/mlnb/outputs', params={'token': TOKEN, 'step': 'data', 'name': 'nope'}, timeout=10)
    assert bad.status_code == 400 and "recorded no output 'nope'" in bad.json()['error']
    assert httpx.get(f'{url}/mlnb/state', timeout=10).status_code in (401, 403)  # authenticated like the rest of the server

    page = browser.new_page(viewport={'width': 1500, 'height': 1000})
    page.goto(f'{url}/lab/workspaces/panel?token={TOKEN}')
    page.wait_for_selector(f'{PANEL} li.mlnb-step[data-step="evaluate"]', state='attached', timeout=90_000)
    # the command in the palette opens the panel (the palette takes no keys until JupyterLab has settled)
    for attempt in range(4):
        page.keyboard.press('Control+Shift+c')
        try:
            page.fill('.lm-CommandPalette-input', 'mlnb: open panel', timeout=10_000)
            page.click('.lm-CommandPalette-item:has-text("mlnb: open panel")', timeout=10_000)
            page.wait_for_selector(f'{PANEL} li.mlnb-step[data-step="evaluate"]', state='visible', timeout=10_000)
            break
        except Exception:
            page.keyboard.press('Escape')
    else: raise AssertionError('the command "mlnb: open panel" did not show the panel')
    wait_states(page, {s: 'cached' for s in STEPS}, timeout=30_000)
    assert list(states(page)) == STEPS + ['train_region', 'evaluate_region']  # the optional fan-out steps, with their items nested
    assert step(page, 'train_region').locator('li.mlnb-step').count() == 4
    assert 'needs data, features' in step(page, 'train').inner_text()
    # the DAG drawn at the top: one box per step (a fanned-out step counts its items), an arrow per need, the state's colour
    boxes = dag_boxes(page)
    assert list(boxes) == STEPS + ['train_region', 'evaluate_region'], boxes
    assert all(boxes[s] == ([s, 'cached'], CACHED) for s in STEPS), boxes
    assert boxes['train_region'][0][1].endswith(' · 4 items') and boxes['evaluate_region'][0][1].endswith(' · 4 items'), boxes
    assert page.locator(f'{DAG} line').count() == 9  # features, train, train_region, evaluate, evaluate_region need 1 + 2 + 2 + 2 + 2 steps
    fits = page.evaluate(f"() => [document.querySelector('{DAG}').getBoundingClientRect().width, document.querySelector('{PANEL}').clientWidth]")
    assert 0 < fits[0] <= fits[1], fits  # drawn top to bottom, scaled to the sidebar's width
    page.locator(f'{DAG} g.node[data-node="evaluate"]').click()  # a click on a box shows its step in the list
    page.wait_for_selector(f'{PANEL} li.mlnb-step.mlnb-highlight[data-step="evaluate"]', timeout=10_000)
    assert page.locator(f'{PANEL} li.mlnb-highlight').count() == 1
    page.locator(PANEL).screenshot(path=str(shots / 'dag.png'))
    champ = page.locator(f'{PANEL} .mlnb-champion[data-model="churn"]').inner_text()
    assert 'churn:' in champ and 'mlnb monitor: no verdict yet' in champ
    page.screenshot(path=str(shots / 'cached.png'))

    # a parameter default changed in the train notebook, saved: train and evaluate are stale, and the panel says why
    path = root / 'nbs' / '03_train.ipynb'
    nb = nbformat.read(path, 4)
    cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    assert 'max_depth = 8' in cell.source
    cell.source = cell.source.replace('max_depth = 8', 'max_depth = 6')
    nbformat.write(nb, path)
    page.click(f'{PANEL} button[data-action="refresh"]')
    wait_states(page, {'data': 'cached', 'features': 'cached', 'train': 'stale', 'evaluate': 'stale'}, timeout=30_000)
    why = step(page, 'train').locator('.mlnb-why').first.inner_text()
    assert 'max_depth' in why and '8' in why and '6' in why, why
    assert 'train' in step(page, 'evaluate').locator('.mlnb-why').first.inner_text()
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll('{DAG} g.node[data-node="train"] text')).some(t => t.textContent === 'stale')""", timeout=30_000)
    boxes = dag_boxes(page)
    assert boxes['train'] == (['train', 'stale'], STALE) and boxes['evaluate'][1] == STALE and boxes['data'][1] == CACHED, boxes
    assert 'max_depth' in page.locator(f'{DAG} g.node[data-node="train"] title').text_content()  # why, shown on hover
    page.screenshot(path=str(shots / 'stale.png'))

    # run evaluate from the panel: the runner runs train with it, reuses data and features
    before = {r['id'] for r in json.loads(mlnb('runs', '--json', cwd=root, env=panel_lab['env']).stdout)}
    step(page, 'evaluate').locator('button[data-action="run"]').first.click()
    page.wait_for_selector(f'{PANEL} .mlnb-launched[data-running="true"]', timeout=30_000)  # the panel asks every 2 s while it runs
    assert 'mlnb run evaluate: running' in page.inner_text(f'{PANEL} .mlnb-launched')
    wait_states(page, {s: 'cached' for s in STEPS}, timeout=180_000)
    page.wait_for_selector(f'{PANEL} .mlnb-launched[data-running="false"]', timeout=30_000)
    runs = json.loads(mlnb('runs', '--json', cwd=root, env=panel_lab['env']).stdout)
    new = [r for r in runs if r['id'] not in before]
    assert [(r['status'], r['targets']) for r in new] == [('ok', ['evaluate'])], new
    run_id = new[0]['id']
    lasts = page.evaluate(f"""() => Object.fromEntries(Array.from(document.querySelectorAll('{PANEL} > div > ul > li.mlnb-step'))
        .map(li => {{ const l = li.querySelector(':scope > .mlnb-last'); return [li.dataset.step, l && [l.dataset.lastStatus, l.dataset.lastRun]]; }}))""")
    assert lasts['train'] == ['ok', run_id] and lasts['evaluate'] == ['ok', run_id], lasts
    assert lasts['data'] == ['cached', run_id] and lasts['features'] == ['cached', run_id], lasts
    assert 'finished' in page.locator(f'{PANEL} .mlnb-launched').inner_text()
    page.screenshot(path=str(shots / 'ran.png'))

    # the executed notebook of evaluate, opened from the panel
    step(page, 'evaluate').locator('a[data-action="open-executed"]').first.click()
    page.wait_for_selector(f'.lm-DockPanel-tabBar .lm-TabBar-tab:has-text("evaluate.ipynb")', timeout=60_000)
    nbpanel = '.jp-NotebookPanel:not(.lm-mod-hidden)'
    page.wait_for_function(f"() => (document.querySelector('{nbpanel}') || {{}}).innerText?.includes('mlnb_run')", timeout=60_000)
    assert 'gate' in page.inner_text(nbpanel) and run_id in page.inner_text(nbpanel)
    assert (root / '.mlnb' / 'runs' / run_id / 'evaluate.ipynb').exists()
    page.screenshot(path=str(shots / 'executed-notebook.png'))

    # the outputs of data by name, and the training table previewed
    step(page, 'data').locator('a[data-action="outputs"]').first.click()
    page.wait_for_selector(f'{PANEL} .mlnb-output-list a[data-output="train"]', timeout=30_000)
    listing = page.inner_text(f'{PANEL} .mlnb-output-list')
    assert 'train table:' in listing and 'rows x' in listing and 'n_rows int' in listing, listing
    page.click(f'{PANEL} .mlnb-output-list a[data-output="train"]')
    page.wait_for_selector(f'{PANEL} .mlnb-preview table tr td', timeout=30_000)
    assert page.locator(f'{PANEL} .mlnb-preview table tr').count() == 21  # the header and the first 20 rows
    assert 'churned' in page.inner_text(f'{PANEL} .mlnb-preview table tr >> nth=0')
    page.locator(f'{PANEL} .mlnb-preview').scroll_into_view_if_needed()
    page.screenshot(path=str(shots / 'preview.png'))

    # the two pipeline runs compared side by side: train's max_depth 8 in the first, 6 in the one run from the panel
    first = next(iter(before))
    listed = httpx.get(f'{url}/mlnb/runs', params={'token': TOKEN}, timeout=10).json()
    assert [(r['id'], r['kind']) for r in listed] == [(run_id, 'pipeline'), (first, 'pipeline')], listed
    bad = httpx.get(f'{url}/mlnb/compare', params={'token': TOKEN, 'a': 'nope', 'b': run_id}, timeout=10)
    assert bad.status_code == 400 and "No run matches 'nope'" in bad.json()['error']
    bad = httpx.get(f'{url}/mlnb/compare', params={'token': TOKEN, 'a': first}, timeout=10)
    assert bad.status_code == 400 and 'Give the two runs to compare' in bad.json()['error']
    section = f'{PANEL} .mlnb-compare'
    page.wait_for_selector(f'{section} select[data-run="b"] option[value="{run_id}"]', state='attached', timeout=30_000)
    assert page.locator(f'{section} select[data-run="a"] option').count() == 2
    assert 'pipeline evaluate' in page.locator(f'{section} select[data-run="a"] option[value="{run_id}"]').inner_text()
    page.select_option(f'{section} select[data-run="a"]', first)
    page.select_option(f'{section} select[data-run="b"]', run_id)
    page.click(f'{section} button[data-action="compare"]')
    row = page.locator(f'{section} tr[data-step="train"][data-name="max_depth"]')
    row.wait_for(timeout=30_000)
    assert row.locator('td').all_inner_texts() == ['max_depth', '8', '6', '*']
    assert (row.get_attribute('data-kind'), row.get_attribute('data-differs')) == ('param', 'true')
    assert int(row.locator('td').first.evaluate('td => getComputedStyle(td).fontWeight')) >= 600  # shown in bold
    assert page.locator(f'{section} tr.mlnb-compare-step[data-step="train"]').all_inner_texts() == ['train: parameters', 'train: metrics']
    same = page.locator(f'{section} tr[data-step="data"][data-differs]')
    assert same.count() > 0 and all(r.get_attribute('data-differs') == 'false' for r in same.all())  # data was reused: nothing differs
    assert f'A = {first}' in page.inner_text(f'{section} .mlnb-compare-result')
    page.locator(section).scroll_into_view_if_needed()
    page.screenshot(path=str(shots / 'compare.png'))
    page.close()
    for name in ('cached', 'dag', 'stale', 'ran', 'executed-notebook', 'preview', 'compare'):
        assert (shots / f'{name}.png').stat().st_size > 10_000, name
