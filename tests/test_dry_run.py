"""`mlnb run --dry-run --explain --json` on a scaffolded churn project: each kind of change is named exactly, nothing runs or is recorded;
an export change invalidates only the steps that import it; a fan-out a step reads without mapping over it is pointed out."""
import json, sqlite3

import nbformat

from conftest import mlnb


def run_count(root):
    db = sqlite3.connect(root / '.mlnb' / 'ledger.db')
    try: return db.execute('select count(*) from runs').fetchone()[0], db.execute('select count(*) from steps').fetchone()[0]
    finally: db.close()


def dry(root, *args):
    "The plan `mlnb run --dry-run --explain --json` prints: step -> entry; checks that nothing was recorded."
    before = run_count(root)
    out = json.loads(mlnb('run', '--dry-run', '--explain', '--json', *args, cwd=root).stdout)
    assert run_count(root) == before, 'a dry run recorded something'
    return out, {e['step']: e for e in out['steps']}


def status(steps):
    return {n: e['status'] for n, e in steps.items()}


def changes(entry):
    return [(c['part'], c['name']) for c in entry['changes']]


def edit_cell(path, contains, change):
    "Apply `change` to the source of the first code cell of the notebook at `path` containing `contains`; returns (cell number, old text)."
    old = path.read_text()
    nb = nbformat.read(path, 4)
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == 'code' and contains in c.source)
    nb.cells[i].source = change(nb.cells[i].source)
    nbformat.write(nb, path)
    return i + 1, old


def test_each_kind_of_change_is_named_and_nothing_runs(project):
    first = mlnb('run', '--engine', 'fast', cwd=project).stdout.split('Run ')[-1].split()[0]
    out, steps = dry(project)
    assert status(steps) == dict.fromkeys(['data', 'features', 'train', 'evaluate'], 'cached') and out['would_run'] == 0
    assert steps['train']['cached_from'] == first and out['notes'] == []

    # a code line of a step notebook: the changed line, and a short diff of that cell
    nb = project / 'nbs' / '02_features.ipynb'
    cell, old = edit_cell(nb, 'data = mlnb.upstream', lambda s: s + '\nprint(len(train_features))')
    out, steps = dry(project)
    assert status(steps) == {'data': 'cached', 'features': 'run', 'train': 'run', 'evaluate': 'run'}
    assert changes(steps['features']) == [('code', f'cell {cell}')]
    c = steps['features']['changes'][0]
    assert c['text'] == f'code cell {cell} changed: `+print(len(train_features))`', c['text']
    assert '+print(len(train_features))' in c['diff'] and c['diff'][0].startswith('@@') and len(c['diff']) <= 12
    assert [p for p, _ in changes(steps['train'])] == ['upstream']
    text = mlnb('run', '--dry-run', '--explain', cwd=project).stdout
    assert f'features: would run because, since run {first}, code cell {cell} changed' in text and '    +print(len(train_features))' in text
    nb.write_text(old)

    # an `#| export` cell of the train notebook: train (its own cell) and evaluate (it imports churn.train); data and features stay cached
    nb = project / 'nbs' / '03_train.ipynb'
    cell, old = edit_cell(nb, 'def build_model', lambda s: s + '\n\nSPARE_TREES = 0')
    out, steps = dry(project)
    assert status(steps) == {'data': 'cached', 'features': 'cached', 'train': 'run', 'evaluate': 'run'}, status(steps)
    assert changes(steps['train']) == [('code', f'cell {cell}')]
    pkg = [c for c in steps['evaluate']['changes'] if c['part'] == 'package']
    assert [(c['name'], c['notebook']) for c in pkg] == [('churn/train.py', 'nbs/03_train.ipynb')], pkg
    assert pkg[0]['text'] == 'exported module churn/train.py changed (an `#| export` cell of nbs/03_train.ipynb)'
    nb.write_text(old)

    # a `params` entry in pyproject.toml, with its source
    toml = project / 'pyproject.toml'
    old = toml.read_text()
    toml.write_text(old.replace('[tool.mlnb.steps.train]\nnotebook = "nbs/03_train.ipynb"\nneeds = ["data", "features"]\nparams = { n_estimators = 200 }',
                                '[tool.mlnb.steps.train]\nnotebook = "nbs/03_train.ipynb"\nneeds = ["data", "features"]\nparams = { n_estimators = 150 }'))
    out, steps = dry(project)
    assert status(steps) == {'data': 'cached', 'features': 'cached', 'train': 'run', 'evaluate': 'run'}
    assert changes(steps['train']) == [('params', 'n_estimators')]
    assert steps['train']['changes'][0]['text'] == 'parameter n_estimators changed: 200 -> 150 (from pyproject.toml [tool.mlnb.steps.train] params)'
    toml.write_text(old)

    # a profile, and -p: each named as the source of the value
    out, steps = dry(project, '--profile', 'ci')
    assert steps['data']['status'] == 'run' and changes(steps['data']) == [('params', 'sample_frac')], steps['data']
    assert steps['data']['changes'][0]['source'] == 'profile ci'
    train = {c['name']: c for c in steps['train']['changes']}
    assert train['n_estimators']['text'] == ('parameter n_estimators changed: 200 (from pyproject.toml [tool.mlnb.steps.train] params) '
                                             '-> 50 (from profile ci)'), train['n_estimators']['text']
    out, steps = dry(project, '-p', 'train.n_estimators=60')
    assert status(steps)['features'] == 'cached' and steps['train']['changes'][0]['source'] == '-p train.n_estimators=60'

    # an input file
    csv = project / 'data' / 'customers.csv'
    old = csv.read_text()
    csv.write_text(''.join(old.splitlines(keepends=True)[:-1]))
    out, steps = dry(project)
    assert changes(steps['data']) == [('inputs', 'data/customers.csv')] and out['would_run'] == 4
    csv.write_text(old)

    # a contract
    yaml = project / 'contracts' / 'customers.yaml'
    old = yaml.read_text()
    yaml.write_text(old + '\n# reviewed\n')
    out, steps = dry(project)
    checks = [n for n, e in steps.items() if ('contracts', 'customers') in changes(e)]
    assert checks and all(e['status'] == 'run' for n, e in steps.items() if n in checks), steps
    assert all(changes(steps[n]) == [('contracts', 'customers')] for n in checks)
    yaml.write_text(old)

    # everything back as it was: cached again, and still only the one run in the ledger
    out, steps = dry(project)
    assert out['would_run'] == 0, [e['why'] for e in out['steps']]
    assert run_count(project)[0] == 1

    # items read from an output of a step that would run are known only after it runs; with it cached, each item is planned
    out, steps = dry(project, 'evaluate_region', '-p', 'sample_frac=0.5')
    assert status(steps) == dict.fromkeys(['data', 'features', 'train_region', 'evaluate_region'], 'run'), status(steps)
    assert steps['train_region']['why'] == "would run once per item of data.segments, known only after 'data' runs"
    assert steps['evaluate_region']['why'] == "would run after 'train_region' (what it reads is known only then)"
    out, steps = dry(project, 'evaluate_region')
    items = [n for n, e in steps.items() if e['parent'] == 'train_region']
    assert items == [f'train_region[region={r}]' for r in ('east', 'north', 'south', 'west')], items
    assert all(steps[n]['why'] == 'would run: no earlier successful execution of this step is recorded' for n in items)
    assert (out['would_run'], out['cached']) == (2, 2) and steps['evaluate_region[region=north]']['status'] == 'run'


def test_fan_out_read_without_mapping_is_a_note_and_a_clear_message(project):
    toml = project / 'pyproject.toml'
    toml.write_text(toml.read_text().replace('params = { n_estimators = 200 }\n\n[tool.mlnb.steps.evaluate]',
                                             'params = { n_estimators = 20 }\ngrid = { max_depth = [4, 6] }\n\n[tool.mlnb.steps.evaluate]', 1))
    text = mlnb('run', '--dry-run', cwd=project).stdout
    assert "Note: Step 'evaluate' needs 'train', which runs once per item of its fan-out (max_depth), but 'evaluate' does not map over it" in text, text
    assert 'grid = { max_depth = [4, 6] } in [tool.mlnb.steps.evaluate]' in text and "['max_depth=4']" in text, text
    assert 'train[max_depth=4]: would run' in text and 'train[max_depth=6]: would run' in text
    res = mlnb('run', '--engine', 'fast', cwd=project, check=False)
    assert res.returncode == 1
    assert "Note: Step 'evaluate' needs 'train'" in res.stderr, res.stderr
    assert "ItemKeyError" in res.stderr and "Step 'train' ran once per item (max_depth=4, max_depth=6)" in res.stderr, res.stderr
    assert "declare the same fan-out on this step" in res.stderr and "mlnb.upstream('train', upstream)['max_depth=4']" in res.stderr, res.stderr
