"""A step notebook run by hand uses, and shows, the parameters the pipeline would use: the scaffold's train notebook says
n_estimators = 300 while pyproject.toml's `params` says 200, so a hand run (in a real kernel driven by nbclient, as a front end
would) trains 200 trees and flags the override under its parameters cell. What a later hand run reads upstream is the newest
made: a fully cached `mlnb run` after the hand run does not make the older pipeline model the newest."""
import json

import nbformat

from conftest import hand_kernel, mlnb

OVERRIDE = ("n_estimators = 300 in this notebook is overridden by pyproject.toml [tool.mlnb.steps.train] params: "
            "the pipeline and this run use 200; change it in pyproject.toml or remove the override.")


def shown(cell) -> str:
    "The text a cell displayed and printed."
    return '\n'.join(o.get('data', {}).get('text/plain', '') if o['output_type'] != 'stream' else o['text'] for o in cell.outputs)


def value(client, nb, code: str) -> str:
    "Run `code` in the kernel as one more cell; its returned value as text."
    cell = nbformat.v4.new_code_cell(code)
    nb.cells.append(cell)
    client.execute_cell(cell, len(nb.cells) - 1)
    nb.cells.pop()
    return shown(cell)


def test_a_hand_run_uses_and_flags_the_pipeline_parameters_and_reads_the_newest_made(project, monkeypatch):
    root = project
    assert 'params = { n_estimators = 200 }' in (root / 'pyproject.toml').read_text()
    path = root / 'nbs' / '03_train.ipynb'
    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    params.source = params.source.replace('n_estimators = 200', 'n_estimators = 300')  # the data scientist changes the default and saves
    nbformat.write(nb, path)

    mlnb('run', '--profile', 'ci', 'train', cwd=root)
    pipeline = json.loads(mlnb('runs', '--json', cwd=root).stdout)[0]

    nb, client, started = hand_kernel(root, 'nbs/03_train.ipynb')
    with started:
        for i, cell in enumerate(nb.cells): client.execute_cell(cell, i)
        params = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
        table = shown(params)
        assert "the parameters of step 'train' as `mlnb run` would use them (this run uses them)" in table, table
        assert 'WARNING: ' + OVERRIDE in table, table
        assert any(OVERRIDE in o.get('data', {}).get('text/html', '') for o in params.outputs), params.outputs  # what Lab renders
        assert value(client, nb, 'len(model[-1].estimators_), n_estimators') == '(200, 200)'

        # opting out: the cell's own value stays, and the table still says what the pipeline uses
        with open(root / 'pyproject.toml', 'a') as f: f.write('\n[tool.mlnb.hand]\nparams = "notebook"\n')
        client.execute_cell(params, nb.cells.index(params))
        assert 'the pipeline uses 200, this run 300' in shown(params), shown(params)
        assert value(client, nb, 'n_estimators') == '300'
    (root / 'pyproject.toml').write_text((root / 'pyproject.toml').read_text().replace('\n[tool.mlnb.hand]\nparams = "notebook"\n', ''))

    hand = next(r for r in json.loads(mlnb('runs', '--json', cwd=root).stdout) if r['kind'] == 'interactive')
    step = json.loads(mlnb('show', hand['id'], '--json', cwd=root).stdout)['steps'][0]
    assert step['params']['n_estimators'] == 200, step['params']  # the record holds the value used
    meta = json.loads((root / '.mlnb' / 'runs' / hand['id'] / 'train.ipynb').read_text())['metadata']['mlnb']
    assert meta['param_sources']['n_estimators'] == 'pyproject.toml [tool.mlnb.steps.train] params', meta['param_sources']

    # a fully cached pipeline run after the hand run: the hand-trained model stays the newest made
    mlnb('run', '--profile', 'ci', 'train', cwd=root)
    cached = json.loads(mlnb('runs', '--json', cwd=root).stdout)[0]
    assert cached['kind'] == 'pipeline' and cached['id'] != pipeline['id']
    assert {s['status'] for s in json.loads(mlnb('show', cached['id'], '--json', cwd=root).stdout)['steps']} == {'cached'}

    from mlnb.hand import upstream
    from mlnb.notebook import upstream as read
    monkeypatch.setenv('MLNB_PROJECT_ROOT', str(root))
    monkeypatch.syspath_prepend(str(root))  # the recorded model unpickles with the project's package
    newest = upstream('train')
    assert (newest['run_id'], newest['kind'], newest['reused_by']) == (hand['id'], 'interactive', None), newest
    chosen = upstream('train', source='pipeline')
    assert (chosen['run_id'], chosen['reused_by']) == (pipeline['id'], cached['id']), chosen
    assert chosen['made'] < newest['made']
    assert len(read('train')['model'][-1].estimators_) == 200  # the model read back is the hand run's
    assert len(read('train', source='pipeline')['model'][-1].estimators_) == 50  # profile ci
    assert upstream('train', run=cached['id'])['run_id'] == pipeline['id']  # a cached run's outputs are those its origin made
