"""`mlnb run --explain` and `mlnb show RUN --explain` on a scaffolded project: why each step ran, by name."""
import json

import nbformat

from conftest import mlnb


def explained(res):
    "Step -> the sentence `--explain` printed for it."
    return dict(line.split(': ', 1) for line in res.stdout.splitlines() if line.split(': ', 1)[0] in
                ('data', 'features', 'train', 'evaluate'))


def test_explain_names_the_parameter_the_cell_and_the_input(project):
    first = mlnb('run', '--engine', 'fast', cwd=project)
    first_id = first.stdout.split('Run ')[-1].split()[0]
    # a parameter
    why = explained(mlnb('run', '--engine', 'fast', '--explain', '-p', 'n_estimators=60', cwd=project))
    assert why['data'] == f'cached: nothing changed since run {first_id}, whose outputs were reused'
    assert why['train'] == (f'ran because, since run {first_id}, parameter n_estimators changed: '
                            '200 (from pyproject.toml [tool.mlnb.steps.train] params) -> 60 (from -p n_estimators=60)'), why['train']
    assert why['evaluate'].startswith('ran because') and "upstream step 'train' changed" in why['evaluate']
    # a code cell of the features notebook: its position and the changed line are named, and a short diff of the cell shown
    nb_path = project / 'nbs' / '02_features.ipynb'
    nb = nbformat.read(nb_path, 4)
    i = next(i for i, c in enumerate(nb.cells) if c.source.startswith('#| notest\ndata = mlnb.upstream'))
    nb.cells[i].source += '\nprint(len(train_features))'
    nbformat.write(nb, nb_path)
    res = mlnb('run', '--engine', 'fast', '--explain', '-p', 'n_estimators=60', cwd=project)
    why = explained(res)
    assert why['features'].endswith(f'code cell {i + 1} changed: `+print(len(train_features))`'), why['features']
    assert '    +print(len(train_features))' in res.stdout and '    @@ ' in res.stdout, res.stdout
    assert why['data'].startswith('cached') and "upstream step 'features' changed" in why['train']
    # an input file
    csv = project / 'data' / 'customers.csv'
    csv.write_text(''.join(csv.read_text().splitlines(keepends=True)[:-1]))
    res = mlnb('run', '--engine', 'fast', '--explain', '-p', 'n_estimators=60', cwd=project)
    run_id = res.stdout.split('Run ')[-1].split()[0]
    why = explained(res)
    assert why['data'].endswith('input file data/customers.csv changed'), why['data']
    # the same, later, from the ledger
    shown = json.loads(mlnb('show', run_id, '--explain', '--json', cwd=project).stdout)
    data = next(e for e in shown['explain'] if e['step'] == 'data')
    assert [(c['part'], c['name']) for c in data['changes']] == [('inputs', 'data/customers.csv')]
    text = mlnb('show', run_id[:15], '--explain', cwd=project).stdout
    assert 'data: ran because' in text and 'input file data/customers.csv changed' in text
    # --force with nothing changed says so
    why = explained(mlnb('run', 'data', '--engine', 'fast', '--force', '--explain', cwd=project))
    assert why['data'] == f'ran because of --force (nothing changed since run {run_id})'


def test_report_needs_a_run(project):
    res = mlnb('report', cwd=project, check=False)
    assert res.returncode == 2 and 'No pipeline run is recorded' in res.stderr and 'Traceback' not in res.stderr
    res = mlnb('report', 'nope', cwd=project, check=False)
    assert res.returncode != 0 and "No run matches 'nope'" in res.stderr
