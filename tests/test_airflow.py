"""`mlnb export airflow` run by Airflow itself: the scaffolded project's DAG, tested with `airflow dags test` (Airflow 3 in a
virtual environment of its own, tests/airflow_env.py). The first DAG run executes every step and every item once, one task
each; the second reuses them all from mlnb's cache."""
import ast, json, re
from pathlib import Path

import pytest

from conftest import mlnb

# an optional step that fans out over a literal grid: one task per item in the DAG
GRID = '''
[tool.mlnb.steps.train_depth]
notebook = "nbs/03_train.ipynb"
needs = ["data", "features"]
grid = { max_depth = [4, 6] }
optional = true
'''
UNITS = {'data', 'features', 'train', 'evaluate', 'train_depth[max_depth=4]', 'train_depth[max_depth=6]'}
# the scaffold's train_region fans out over the regions the data step records: mapped when the DAG runs, one task per region
REGIONS = {f'train_region[region={r}]' for r in ('east', 'north', 'south', 'west')}


@pytest.fixture(scope='module')
def airflow_home(tmp_path_factory):
    "One Airflow home for these tests (its database migrated once); each test writes the DAG file of its own project into it."
    from airflow_env import AirflowHome, Unavailable
    try: return AirflowHome(tmp_path_factory.mktemp('airflow'))
    except Unavailable as e: pytest.skip(str(e))


def _runs_since(root, seen: set) -> list[dict]:
    "The ledger's runs not in `seen`, each with its steps (by `mlnb runs` and `mlnb show`), oldest first."
    ids = [r['id'] for r in json.loads(mlnb('runs', '--json', '-n', '100', cwd=root).stdout) if r['id'] not in seen]
    return [json.loads(mlnb('show', i, '--json', cwd=root).stdout) for i in reversed(ids)]


def _executed(runs: list[dict]) -> list[str]:
    "The steps and items the runs executed (not reused), in order; a fanned-out step's own row is left out."
    return [s['step'] for r in runs for s in r['steps'] if s['status'] == 'ok' and s['step'] not in ('train_depth', 'train_region')]


def test_pipeline_dag_runs_each_step_once_then_reuses_the_cache(project, airflow_home):
    with open(project / 'pyproject.toml', 'a') as f: f.write(GRID)
    out = mlnb('export', 'airflow', 'evaluate', 'train_depth', 'train_region', '--out', airflow_home.dags, '--profile', 'ci', '--engine', 'fast',
               cwd=project).stdout
    dag_file = airflow_home.dags / 'mlnb_churn.py'
    assert out.strip() == f"Wrote {dag_file}: DAGs mlnb_churn_pipeline and mlnb_churn_loop."
    text = dag_file.read_text()
    tasks = ast.literal_eval(next(l for l in text.split('\nTASKS = ')[1:]).split('\n}\n')[0] + '\n}')
    assert {t[0] for t in tasks.values()} == UNITS | {'train_region'}
    assert "\nFANOUT = ['train_region']\n" in text
    assert tasks['train_depth__max_depth_4'] == ('train_depth[max_depth=4]', ['data', 'features'], 'all_success')
    listed = airflow_home.airflow('dags', 'list', '--local', '-o', 'json').stdout  # parsed here, as Airflow's DAG processor parses it
    assert {d['dag_id'] for d in json.loads(listed[listed.index('[{'):])} == {'mlnb_churn_pipeline', 'mlnb_churn_loop'}

    # first DAG run: one mlnb run per task, and each step and item executed exactly once
    airflow_home.airflow('dags', 'test', 'mlnb_churn_pipeline')
    first = _runs_since(project, set())
    assert len(first) == len(UNITS | REGIONS) and all(r['status'] == 'ok' for r in first), [(r['targets'], r['status']) for r in first]
    assert sorted(r['targets'][0] for r in first) == sorted(UNITS | REGIONS)  # a mapped task per region
    assert sorted(_executed(first)) == sorted(UNITS | REGIONS)
    assert all(r['profile'] == 'ci' and r['engine'] == 'fast' for r in first)
    # an item's task ran that item alone, with what it needs from the cache
    one = next(r for r in first if r['targets'] == ['train_depth[max_depth=6]'])
    assert {s['step']: s['status'] for s in one['steps'] if s['step'] != 'train_depth'} == \
        {'data': 'cached', 'features': 'cached', 'train_depth[max_depth=6]': 'ok'}

    # second DAG run: every task ends at once, nothing executed again
    airflow_home.airflow('dags', 'test', 'mlnb_churn_pipeline')
    second = _runs_since(project, {r['id'] for r in first})
    assert len(second) == len(UNITS | REGIONS) and all(r['status'] == 'ok' for r in second)
    assert _executed(second) == []
    assert {s['status'] for r in second for s in r['steps']} == {'cached'}


def test_a_failed_step_fails_its_task_and_stops_the_tasks_after_it(project, airflow_home):
    nb = project / 'nbs' / '02_features.ipynb'
    doc = json.loads(nb.read_text())
    doc['cells'].append({'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'outputs': [], 'id': 'boom0001',
                         'source': ['raise RuntimeError("the features are broken")']})
    nb.write_text(json.dumps(doc))
    mlnb('export', 'airflow', '--out', airflow_home.dags, '--profile', 'ci', '--engine', 'fast', cwd=project)
    r = airflow_home.airflow('dags', 'test', 'mlnb_churn_pipeline', check=False)
    assert r.returncode != 0
    runs = _runs_since(project, set())
    assert [x['targets'] for x in runs] == [['data'], ['features']]  # train and evaluate never started
    assert runs[1]['status'] == 'failed' and 'the features are broken' in (runs[1]['error'] or '')


def test_loop_dag_runs_one_pass_of_mlnb_loop(project, request):
    if mlnb('loop', '--help', cwd=project, check=False).returncode != 0: pytest.skip('this mlnb has no `mlnb loop` command yet')
    airflow_home = request.getfixturevalue('airflow_home')
    mlnb('export', 'airflow', '--out', airflow_home.dags, '--loop-schedule', '*/30 * * * *', cwd=project)
    r = airflow_home.airflow('dags', 'test', 'mlnb_churn_loop', check=False)
    log = r.stdout + r.stderr
    ran = re.search(r"Running command: \['[^']*bash', '-c', '(\S+) loop'\]", log)
    assert ran and Path(ran.group(1)).name == 'mlnb', log[-3000:]
    code = int(re.search(r'Command exited with return code (\d+)', log).group(1))
    assert (r.returncode == 0) == (code == 0), log[-3000:]  # the DAG run ends as the pass did


def test_commands_run_as_written_never_as_templates(project, airflow_home):
    "A `-p` value holding Jinja's `{{ }}` and `{# #}` and a name ending in `.sh` reach `mlnb run` as written: Airflow renders nothing."
    from mlnb.airflow import dag_file
    from mlnb.pipeline import make_plan
    from mlnb.project import load_project
    value = 'x{{ ds }}{# y #}.sh'
    plan = make_plan(load_project(project), ['data'], None, [f'data.source={value}'])
    echo = project / 'echo-mlnb'  # stands in for mlnb: prints what it was given
    echo.write_text('#!/bin/sh\nprintf "ARGS:%s\\n" "$*"\n')
    echo.chmod(0o755)
    (airflow_home.dags / 'mlnb_churn.py').write_text(dag_file(plan, str(echo), ['-p', f'data.source={value}']))
    r = airflow_home.airflow('dags', 'test', 'mlnb_churn_pipeline')
    log = r.stdout + r.stderr
    assert f'ARGS:run --quiet -p data.source={value} data' in log, log[-3000:]
