"""Outputs people can browse: the run report's model charts in a real Chromium (the churn scaffold: a binary classifier; the
ported wine and diabetes projects: a multiclass classifier and a regressor), and a recorded output shown in the notebook.

Real papermill runs (`mlnb run --engine fast`), the real `mlnb report`, a real kernel through nbclient.
"""
import sys
from pathlib import Path

import nbformat
import pytest

from browser import chromium
from conftest import mlnb, run

CLASSIFIER = ['ROC curve', 'Precision-recall curve', 'Confusion matrix', 'Calibration', 'Feature importances']
EXPECTED = {'churn': CLASSIFIER, 'wine': CLASSIFIER, 'diabetes': ['Predicted against true', 'Residuals']}


@pytest.fixture(scope='module')
def browser():
    with chromium() as b:
        yield b


def charts_in_browser(browser, report: Path, png: Path) -> dict:
    "The model charts the browser shows in `report`: title -> (visible width, SVG title text, curves, cells, bars, points); a screenshot to `png`."
    tab = browser.new_page(viewport={'width': 1200, 'height': 900})
    try:
        tab.goto(report.resolve().as_uri())
        tab.wait_for_load_state('load')
        charts = tab.evaluate("""Array.from(document.querySelectorAll('figure.model-chart')).map(f => {
            const s = f.querySelector('svg'), r = s.getBoundingClientRect();
            return [f.dataset.chart, r.width, r.height, s.querySelector('text').textContent, s.querySelectorAll('.curve').length,
                    s.querySelectorAll('.cell').length, s.querySelectorAll('.bar').length, s.querySelectorAll('circle').length,
                    Array.from(s.querySelectorAll('.xlabel, .ylabel')).map(t => t.textContent)]; })""")
        text = tab.inner_text('body')
        tab.locator('div.charts.model').screenshot(path=str(png))
    finally: tab.close()
    return {'charts': {c[0]: dict(zip(['width', 'height', 'title', 'curves', 'cells', 'bars', 'points', 'axes'], c[1:])) for c in charts},
            'text': text}


def check_report(browser, root: Path, name: str, tmp_path: Path) -> dict:
    mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root)  # fewer trees and rows: the charts are the same kind
    report = tmp_path / 'report.html'
    mlnb('report', '--out', report, cwd=root)
    seen = charts_in_browser(browser, report, tmp_path / f'{name}-model.png')
    assert 'The model charts could not be drawn' not in seen['text'] and 'No model charts' not in seen['text']
    charts = seen['charts']
    assert list(charts) == EXPECTED[name], charts
    for title, c in charts.items():
        assert c['width'] > 200 and c['height'] > 100, (title, c)  # shown, not collapsed
        assert c['title'].startswith(title.replace(' curve', '')), (title, c['title'])
    assert (tmp_path / f'{name}-model.png').stat().st_size > 10_000
    # the artifacts by name: which file of the store holds each recorded output
    assert 'Outputs kept as artifacts' in seen['text'] and '.parquet' in seen['text'] and 'sklearn.pipeline.Pipeline' in seen['text']
    return seen


def test_report_of_binary_classifier_shows_its_model_charts(project, browser, tmp_path):
    charts = check_report(browser, project, 'churn', tmp_path)['charts']
    assert charts['ROC curve']['curves'] == 1 and 'class 1' in charts['ROC curve']['title']
    assert charts['Confusion matrix']['cells'] == 4
    assert charts['ROC curve']['axes'] == ['false positive rate', 'true positive rate']
    assert charts['Calibration']['axes'] == ['mean predicted probability', 'share of positives']
    assert charts['Feature importances']['bars'] >= 5


def test_report_of_ported_project_shows_its_model_charts(ported, browser, tmp_path):
    seen = check_report(browser, ported, ported.name, tmp_path)
    charts = seen['charts']
    if ported.name == 'wine':  # three cultivars: one curve per class against the rest, a 3 x 3 confusion matrix
        assert charts['ROC curve']['curves'] == 3 and charts['Precision-recall curve']['curves'] == 3
        assert charts['Confusion matrix']['cells'] == 9 and charts['Calibration']['curves'] == 3
        assert charts['Feature importances']['bars'] == 15
    else:  # a regressor: one point per held-out row, and its gradient boosting has no importances to show
        pts = charts['Predicted against true']['points']
        assert pts >= 20 and charts['Residuals']['points'] == pts
        assert charts['Residuals']['axes'] == ['predicted value', 'residual']
        assert 'The model has no feature importances' in seen['text']


def test_recorded_dataframe_is_shown_in_the_notebook(browser, tmp_path, monkeypatch):
    "A kernel runs `mlnb.record` on a DataFrame: the output carries an HTML table (what JupyterLab shows) beside the data read back."
    from mlnb.outputs import read
    (tmp_path / 'pyproject.toml').write_text('[tool.nbdev]\nlib_path = "x"\n')
    monkeypatch.setenv('MLNB_PROJECT_ROOT', str(tmp_path))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import mlnb, pandas as pd\n"
        "mlnb.record('customers', pd.DataFrame({'tenure': range(500), 'region': ['north', 'south'] * 250}))\n"
        "mlnb.record('auc', 0.75)")], metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}}),
        tmp_path / 'in.ipynb')
    # a process of its own: nbclient leaves an asyncio loop behind, where playwright's sync API refuses to run
    run([sys.executable, '-c', "import nbformat, sys; from nbclient import NotebookClient; nb = nbformat.read('in.ipynb', 4); "
         "NotebookClient(nb, timeout=120, kernel_name='python3', resources={'metadata': {'path': '.'}}).execute(); "
         "nbformat.write(nb, 'out.ipynb')"], tmp_path)
    nb = nbformat.read(tmp_path / 'out.ipynb', 4)
    frame, auc = nb.cells[0].outputs
    html = frame['data']['text/html']
    assert '<table' in html and 'north' in html and '500 rows x 2 columns' in html and '.parquet' in html
    assert html.count('<tr') == 11 and len(html) < 4000  # the first ten rows only
    assert auc['data']['text/plain'] == 'auc: 0.75'
    values = read(tmp_path / 'out.ipynb')  # what the next steps read is unchanged
    assert values['auc'] == 0.75 and values['customers'].shape == (500, 2)
    # and the page JupyterLab would show: the table, rendered by Chromium
    from mlnb.render import render_notebook
    page = tmp_path / 'out.html'
    page.write_text(render_notebook(tmp_path / 'out.ipynb', title='out'), encoding='utf-8')
    tab = browser.new_page()
    tab.goto(page.as_uri())
    assert tab.locator('.mlnb-record table').is_visible()
    assert 'customers: DataFrame, 500 rows x 2 columns' in tab.inner_text('body')
    tab.close()
