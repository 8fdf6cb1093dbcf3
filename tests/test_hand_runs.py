"""Hand runs are records of their own: two Run Alls of the scaffold's train notebook in one kernel (driven by nbclient, as a
front end would, without a browser) are two hand runs, each with its executed copy, parameters and outputs; `mlnb models`
marks the hand-trained models; `mlnb runs --compare` sets a pipeline run and a hand run side by side."""
import json
from pathlib import Path

import nbformat

from conftest import hand_kernel, mlnb


def run_all_twice(root: Path, notebook: str, edit):
    "Run every cell of `notebook` in one kernel, save `edit(nb)` to disk as a user would, then run every cell again in the same kernel."
    nb, client, started = hand_kernel(root, notebook)
    with started:
        for i, cell in enumerate(nb.cells): client.execute_cell(cell, i)
        edit(nb)
        nbformat.write(nb, root / notebook)
        for i, cell in enumerate(nb.cells): client.execute_cell(cell, i)
    return nb


def fewer_trees(root: Path):
    "The data scientist sets n_estimators to 30 in the parameters cell and saves, and removes pyproject's override of it (which a hand run uses too)."
    def edit(nb):
        cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
        assert 'n_estimators = 200' in cell.source
        cell.source = cell.source.replace('n_estimators = 200', 'n_estimators = 30')
        toml = (root / 'pyproject.toml').read_text()
        assert toml.count('params = { n_estimators = 200 }\n') == 2  # train and train_region
        (root / 'pyproject.toml').write_text(toml.replace('params = { n_estimators = 200 }\n', '', 1))
    return edit


def test_two_run_alls_are_two_hand_runs_with_executed_copies(project):
    root = project
    mlnb('run', '--profile', 'ci', 'train', cwd=root)
    pipeline = json.loads(mlnb('runs', '--json', cwd=root).stdout)[0]
    assert pipeline['kind'] == 'pipeline' and pipeline['status'] == 'ok', pipeline

    run_all_twice(root, 'nbs/03_train.ipynb', fewer_trees(root))

    hand = [r for r in json.loads(mlnb('runs', '--json', cwd=root).stdout) if r['kind'] == 'interactive']
    assert len(hand) == 2 and hand[0]['id'] != hand[1]['id'], hand
    assert all(r['targets'] == ['train'] for r in hand)
    second, first = hand  # newest first
    copies = {}
    for r, trees in ((first, 200), (second, 30)):
        shown = json.loads(mlnb('show', r['id'], '--json', cwd=root).stdout)['steps'][0]
        assert shown['params']['n_estimators'] == trees, shown['params']
        assert {'model', 'model_tag', 'train_roc_auc'} <= set(shown['outputs']), shown['outputs']
        copy = json.loads((root / '.mlnb' / 'runs' / r['id'] / 'train.ipynb').read_text())
        meta = copy['metadata']['mlnb']
        assert (meta['run_id'], meta['step'], meta['params']['n_estimators']) == (r['id'], 'train', trees), meta
        assert meta['upstream_runs'] == {'data': pipeline['id'], 'features': pipeline['id']}, meta
        params = next(c for c in copy['cells'] if 'parameters' in c['metadata'].get('tags', []))
        assert f'n_estimators = {trees}' in ''.join(params['source']) and params['execution_count'] is not None
        copies[trees] = copy
    # each copy holds its own execution: the second Run All's cells ran after every cell of the first
    counts = lambda c: [x['execution_count'] for x in c['cells'] if x['cell_type'] == 'code' and x['execution_count'] is not None]
    assert len(counts(copies[200])) == len(counts(copies[30])) > 5
    assert min(counts(copies[30])) > max(counts(copies[200])), (counts(copies[200]), counts(copies[30]))

    # the two hand-trained models are marked, the pipeline's is not
    models = json.loads(mlnb('models', '--json', cwd=root).stdout)
    mine = {pipeline['id'], first['id'], second['id']} # the session's BentoML store holds other tests' models too
    origin = {m['run_id']: m['hand'] for m in models if m['run_id'] in mine}
    assert origin == {pipeline['id']: False, first['id']: True, second['id']: True}, models
    table = mlnb('models', cwd=root).stdout
    assert 'origin' in table and 'hand' in table and 'pipeline' in table, table

    # a pipeline run and a hand run side by side: both parameter sets and both metrics
    cmp = json.loads(mlnb('runs', '--compare', pipeline['id'], second['id'], '--json', cwd=root).stdout)
    assert (cmp['a']['kind'], cmp['b']['kind']) == ('pipeline', 'interactive')
    train = next(s for s in cmp['steps'] if s['step'] == 'train')
    trees = next(p for p in train['params'] if p['name'] == 'n_estimators')
    assert (trees['a'], trees['b'], trees['differs']) == (50, 30, True), train['params']
    auc = next(m for m in train['metrics'] if m['name'] == 'train_roc_auc')
    assert 0.5 < auc['a'] <= 1 and 0.5 < auc['b'] <= 1, auc
    assert [s['in_b'] for s in cmp['steps'] if s['step'] == 'data'] == [False]
    text = mlnb('runs', '--compare', pipeline['id'], second['id'], cwd=root).stdout
    assert f"B = {second['id']} (hand)" in text and 'n_estimators' in text and 'train_roc_auc' in text, text


def test_a_save_in_lab_is_cleaned_and_its_export_cell_is_planned(project, monkeypatch):
    "`mlnb lab`'s contents manager with nbdev's clean-on-save hook (the scaffold sets jupyter_hooks = true): a saved `#| export` change shows in the next dry run."
    import asyncio
    from mlnb.labserver import RunRecords
    root = project
    assert 'jupyter_hooks = true' in (root / 'pyproject.toml').read_text()
    mlnb('run', '--profile', 'ci', 'train', cwd=root)
    before = {s['step']: s['status'] for s in json.loads(mlnb('run', '--dry-run', '--json', '--profile', 'ci', 'train', cwd=root).stdout)['steps']}
    assert before == {'data': 'cached', 'features': 'cached', 'train': 'cached'}, before

    # what Lab sends on Save: the notebook with an edited `#| export` cell, outputs, execution counts and editor metadata
    nb = json.loads((root / 'nbs' / '03_train.ipynb').read_text())
    cell = next(c for c in nb['cells'] if ''.join(c['source']).startswith('#| export\ndef build_model('))
    cell['source'] = ''.join(cell['source']).replace('min_samples_leaf=5', 'min_samples_leaf=3')
    cell.update(execution_count=7, outputs=[{'output_type': 'stream', 'name': 'stdout', 'text': 'ok\n'}])
    cell['metadata'] = {'tags': [], 'execution': {'iopub.status.busy': '2026-01-01T00:00:00Z'}}
    monkeypatch.chdir(root)  # `mlnb lab` runs the server in the project root; nbdev's hook finds [tool.nbdev] from there
    cm = RunRecords(root_dir=str(root), pre_save_hook='nbdev.clean.clean_jupyter')
    asyncio.run(cm.save({'type': 'notebook', 'format': 'json', 'content': nb}, 'nbs/03_train.ipynb'))
    saved = next(c for c in json.loads((root / 'nbs' / '03_train.ipynb').read_text())['cells'] if 'min_samples_leaf=3' in ''.join(c['source']))
    assert saved['execution_count'] is None and 'execution' not in saved['metadata'], saved  # cleaned as nbdev-clean does

    plan = json.loads(mlnb('run', '--dry-run', '--explain', '--json', '--profile', 'ci', 'train', cwd=root).stdout)
    after = {s['step']: s for s in plan['steps']}
    assert after['train']['status'] == 'run' and after['data']['status'] == 'cached', plan
    assert 'min_samples_leaf=3' in (root / 'churn' / 'train.py').read_text()  # the package was exported before planning
