// The mlnb panel: the project's steps with their state, run buttons, notebooks, outputs and champions.
// Its data comes from mlnb's Jupyter server extension (mlnb/labpanel.py) under <base_url>/mlnb/.
import { JupyterFrontEnd, JupyterFrontEndPlugin, ILayoutRestorer } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { buildIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

interface Last { run_id: string; kind: string; status: string; notebook: string | null; error: string | null; cached_from: string | null; }
interface Step { name: string; parent: string | null; needs: string[]; optional: boolean; notebook: string; state: string; why: string; last: Last | null; }
interface Launched { targets: string[]; pid: number; log: string; running: boolean; returncode: number | null; tail: string[]; }
interface Champion { model: string; champion: string | null; monitor: any; evidence: any; decision: any; }
interface Run { id: string; kind: string; targets: string[]; status: string; started: number; }
interface Compared { name: string; a: any; b: any; differs: boolean; }
interface State { root: string; error: string | null; steps: Step[]; dag: string; champions: Champion[]; launched: Launched[]; running: boolean; }

async function api(path: string, init: RequestInit = {}): Promise<any> {
  const settings = ServerConnection.makeSettings();
  const res = await ServerConnection.makeRequest(URLExt.join(settings.baseUrl, 'mlnb', path), init, settings);
  if (res.status === 404) throw new Error('no mlnb project at the root of this JupyterLab (or mlnb.labpanel is not enabled): start it with `mlnb lab` in a project.');
  const body = await res.json().catch(() => ({ error: `the server answered ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `the server answered ${res.status}`);
  return body;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

class MlnbPanel extends Widget {
  private dag = el('div', { class: 'mlnb-dag' });
  private steps = el('div');
  private outputs = el('div', { class: 'mlnb-outputs' });
  private preview = el('div', { class: 'mlnb-preview' });
  private message = el('div', { class: 'mlnb-message' });
  private runA = el('select', { 'data-run': 'a', title: 'run A' });
  private runB = el('select', { 'data-run': 'b', title: 'run B' });
  private compared = el('div', { class: 'mlnb-compare-result' });
  private seen = '';
  private timer: number | undefined;

  constructor(private app: JupyterFrontEnd) {
    super();
    this.id = 'mlnb-panel';
    this.addClass('mlnb-panel');
    this.title.icon = buildIcon;
    this.title.caption = 'mlnb: the steps of the pipeline';
    const head = el('h2', {}, 'mlnb pipeline');
    const all = el('button', { 'data-action': 'run-all', title: 'mlnb run: the whole pipeline' }, 'run pipeline');
    all.onclick = () => this.run([]);
    const refresh = el('button', { 'data-action': 'refresh' }, 'refresh');
    refresh.onclick = () => this.refresh();
    const compare = el('button', { 'data-action': 'compare', title: 'mlnb runs --compare A B: parameters and metrics side by side' }, 'compare');
    compare.onclick = () => this.compare();
    const section = el('div', { class: 'mlnb-compare' });
    section.append(el('h3', {}, 'Compare runs'), el('div', {}, 'A '), el('div', {}, 'B '), compare, this.compared);
    section.children[1].append(this.runA);
    section.children[2].append(this.runB);
    this.node.append(head, all, refresh, this.message, this.dag, this.steps, this.outputs, this.preview, section);
    void this.poll();
  }

  private open(path: string | null) {
    if (path) void this.app.commands.execute('docmanager:open', { path });
  }

  private async run(targets: string[]) {
    try {
      await api('run', { method: 'POST', body: JSON.stringify({ targets }) });
      this.message.textContent = `started: mlnb run ${targets.join(' ')}`;
    } catch (e) {
      this.message.textContent = String(e);
    }
    await this.refresh();
  }

  private async poll() {
    const state = await this.refresh();
    this.timer = window.setTimeout(() => this.poll(), state && state.running ? 2000 : 10000);
  }

  dispose() {
    window.clearTimeout(this.timer);
    super.dispose();
  }

  async refresh(): Promise<State | null> {
    try {
      const state: State = await api('state');
      const text = JSON.stringify(state);
      if (text !== this.seen) { this.seen = text; this.render(state); }
      return state;
    } catch (e) {
      this.steps.replaceChildren(el('div', { class: 'mlnb-error' }, `mlnb: ${e}`));
      return null;
    }
  }

  private stepItem(s: Step, items: Step[]): HTMLLIElement {
    const li = el('li', { class: 'mlnb-step', 'data-step': s.name, 'data-state': s.state });
    li.append(el('span', { class: 'mlnb-name' }, s.parent ? s.name.slice(s.parent.length) : s.name),
              el('span', { class: 'mlnb-state' }, s.state === 'hand' ? 'ran by hand' : s.state));
    if (s.optional && !s.parent) li.append(el('span', { class: 'mlnb-needs' }, '(optional) '));
    if (s.needs.length) li.append(el('span', { class: 'mlnb-needs' }, `needs ${s.needs.join(', ')}`));
    li.append(el('div', { class: 'mlnb-why' }, s.why));
    if (s.last) {
      const how = s.last.status === 'cached' ? `cached from run ${s.last.cached_from}` : `${s.last.status} in run ${s.last.run_id}`;
      li.append(el('div', { class: 'mlnb-last', 'data-last-status': s.last.status, 'data-last-run': s.last.run_id }, `last: ${how}`));
    }
    const bar = el('div');
    const run = el('button', { 'data-action': 'run', title: `mlnb run ${s.name}: with the steps it needs` }, 'run');
    run.onclick = () => this.run([s.name]);
    bar.append(run);
    if (!s.parent) {
      const nb = el('a', { 'data-action': 'open-notebook', title: s.notebook }, 'notebook');
      nb.onclick = () => this.open(s.notebook);
      bar.append(nb);
    }
    if (s.last && s.last.notebook) {
      const ex = el('a', { 'data-action': 'open-executed', title: s.last.notebook }, 'executed notebook');
      ex.onclick = () => this.open(s.last && s.last.notebook);
      const outs = el('a', { 'data-action': 'outputs' }, 'outputs');
      outs.onclick = () => this.showOutputs(s.name);
      bar.append(ex, outs);
    }
    li.append(bar);
    if (items.length) {
      const sub = el('ul', { class: 'mlnb-steps' });
      for (const i of items) sub.append(this.stepItem(i, []));
      li.append(sub);
    }
    return li;
  }

  // the DAG drawn by the server (mlnb.labpanel.panel_dag: SVG whose text is escaped there); a click on a box shows the step in the list
  private renderDag(svg: string) {
    this.dag.innerHTML = svg || '';
    this.dag.querySelectorAll<SVGGElement>('g.node[data-node]').forEach(g => {
      g.onclick = () => this.showStep(g.dataset.node || '');
    });
  }

  private showStep(name: string) {
    const li = Array.from(this.steps.querySelectorAll<HTMLLIElement>('li.mlnb-step')).find(x => x.dataset.step === name);
    if (!li) return;
    li.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    this.steps.querySelectorAll('.mlnb-highlight').forEach(x => x.classList.remove('mlnb-highlight'));
    li.classList.add('mlnb-highlight');
  }

  private render(state: State) {
    this.renderDag(state.dag);
    const parts: HTMLElement[] = [];
    if (state.error) parts.push(el('div', { class: 'mlnb-error' }, state.error));
    const ul = el('ul', { class: 'mlnb-steps' });
    for (const s of state.steps.filter(x => !x.parent)) ul.append(this.stepItem(s, state.steps.filter(x => x.parent === s.name)));
    parts.push(ul);
    if (state.launched.length) {
      const r = state.launched[state.launched.length - 1];
      const what = r.running ? 'running' : r.returncode === 0 ? 'finished' : `failed (exit code ${r.returncode})`;
      const div = el('div', { class: 'mlnb-launched', 'data-running': String(r.running) }, `mlnb run ${r.targets.join(' ')}: ${what}. `);
      const log = el('a', { title: r.log }, 'log');
      log.onclick = () => this.open(r.log);
      div.append(log);
      if (!r.running && r.returncode !== 0) div.append(el('pre', {}, r.tail.join('\n')));
      parts.push(div);
    }
    parts.push(el('h3', {}, 'Champions'));
    if (!state.champions.length) parts.push(el('div', { class: 'mlnb-why' }, 'no model has been through the gate yet'));
    for (const c of state.champions) {
      const div = el('div', { class: 'mlnb-champion', 'data-model': c.model }, `${c.model}: ${c.champion || 'no champion'}`);
      const verdict = c.monitor ? `${c.monitor.verdict} (${c.monitor.at})` : 'no verdict yet: run `mlnb monitor`';
      div.append(el('div', { class: 'mlnb-why mlnb-monitor' }, `mlnb monitor: ${verdict}`));
      if (c.evidence) div.append(el('div', { class: 'mlnb-why' }, `against challenger ${c.evidence.challenger}: ${c.evidence.reason}`));
      if (c.decision) div.append(el('div', { class: 'mlnb-why' }, `mlnb loop: ${c.decision.action}: ${c.decision.reason}`));
      parts.push(div);
    }
    this.steps.replaceChildren(...parts);
    void this.loadRuns();
  }

  // the latest runs (GET /mlnb/runs) in both selects, keeping what is chosen; at first A is the run before the newest, B the newest
  private async loadRuns() {
    let runs: Run[];
    try { runs = await api('runs'); } catch (e) { this.compared.replaceChildren(el('div', { class: 'mlnb-error' }, String(e))); return; }
    const age = (t: number) => {
      const s = Math.max(0, Date.now() / 1000 - t);
      return s < 60 ? `${Math.round(s)}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : s < 86400 ? `${Math.round(s / 3600)}h ago` : `${Math.round(s / 86400)}d ago`;
    };
    [this.runA, this.runB].forEach((select, i) => {
      const chosen = select.value || (runs[i === 0 ? Math.min(1, runs.length - 1) : 0] || { id: '' }).id;
      select.replaceChildren(...runs.map(r => {
        const kind = r.kind === 'interactive' ? 'hand' : r.kind;
        return el('option', { value: r.id, title: `${r.id}: ${r.status}` }, `${r.id.slice(9)} ${kind} ${(r.targets || []).join(' ') || 'all'} (${age(r.started)})`);
      }));
      select.value = chosen;
    });
  }

  // runs A and B side by side (GET /mlnb/compare): per step, each parameter and metric; a row that differs is bold with a *
  private async compare() {
    try {
      const c = await api(`compare?a=${encodeURIComponent(this.runA.value)}&b=${encodeURIComponent(this.runB.value)}`);
      const show = (v: any) => v === null || v === undefined ? '-' : typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(4) : typeof v === 'object' ? JSON.stringify(v) : String(v);
      const table = el('table');
      const head = el('tr');
      for (const h of ['', 'A', 'B', '']) head.append(el('th', {}, h));
      table.append(head);
      for (const s of c.steps) { // a heading row per step and kind (parameters, metrics), then a row per name
        const parts: [string, Compared[]][] = [['param', s.params], ['metric', s.metrics]];
        if (!s.params.length && !s.metrics.length) {
          const tr = el('tr', { class: 'mlnb-compare-step', 'data-step': s.step });
          tr.append(el('th', { colspan: '4' }, `${s.step}: no parameters or metrics${s.in_a ? '' : ', not in A'}${s.in_b ? '' : ', not in B'}`));
          table.append(tr);
        }
        for (const [kind, rows] of parts) {
          if (!rows.length) continue;
          const tr = el('tr', { class: 'mlnb-compare-step', 'data-step': s.step });
          tr.append(el('th', { colspan: '4' }, `${s.step}: ${kind === 'param' ? 'parameters' : 'metrics'}`));
          table.append(tr);
          for (const r of rows) {
            const row = el('tr', { 'data-step': s.step, 'data-kind': kind, 'data-name': r.name, 'data-differs': String(r.differs) });
            if (r.differs) row.classList.add('mlnb-differs');
            for (const v of [r.name, show(r.a), show(r.b), r.differs ? '*' : '']) row.append(el('td', {}, v));
            table.append(row);
          }
        }
      }
      this.compared.replaceChildren(el('div', { class: 'mlnb-why' }, `A = ${c.a.id} (${c.a.kind}), B = ${c.b.id} (${c.b.kind}); * where they differ`), table);
    } catch (e) {
      this.compared.replaceChildren(el('div', { class: 'mlnb-error' }, String(e)));
    }
  }

  private async showOutputs(step: string) {
    this.preview.replaceChildren();
    try {
      const res = await api(`outputs?step=${encodeURIComponent(step)}`);
      const list = el('ul', { class: 'mlnb-output-list', 'data-step': step });
      for (const o of res.outputs) {
        const li = el('li');
        const a = el('a', { 'data-output': o.name }, o.name);
        a.onclick = () => this.showPreview(step, o.name);
        li.append(a, el('span', { class: 'mlnb-why' }, ` ${o.kind}: ${o.summary}`));
        list.append(li);
      }
      this.outputs.replaceChildren(el('h3', {}, `Outputs of ${step} (run ${res.run_id})`), list);
    } catch (e) {
      this.outputs.replaceChildren(el('div', { class: 'mlnb-error' }, String(e)));
    }
  }

  private async showPreview(step: string, name: string) {
    try {
      const p = await api(`outputs?step=${encodeURIComponent(step)}&name=${encodeURIComponent(name)}`);
      const title = el('h3', {}, `${step}.${name}`);
      if (p.kind !== 'table') { this.preview.replaceChildren(title, el('pre', {}, JSON.stringify(p.value, null, 1))); return; }
      const table = el('table', { 'data-output': name });
      const head = el('tr');
      for (const c of p.columns) head.append(el('th', {}, c));
      table.append(head);
      for (const row of p.rows) {
        const tr = el('tr');
        for (const v of row) tr.append(el('td', {}, v === null ? '' : String(v)));
        table.append(tr);
      }
      this.preview.replaceChildren(title, el('div', { class: 'mlnb-why' }, `${p.shape[0]} rows x ${p.shape[1]} columns, the first ${p.rows.length} shown`), table);
    } catch (e) {
      this.preview.replaceChildren(el('div', { class: 'mlnb-error' }, String(e)));
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'mlnb-labextension:panel',
  description: 'The mlnb panel: the steps of the pipeline, their state, runs, notebooks and outputs.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette | null, restorer: ILayoutRestorer | null) => {
    const panel = new MlnbPanel(app);
    app.shell.add(panel, 'left', { rank: 900 });
    if (restorer) restorer.add(panel, 'mlnb-panel');
    const command = 'mlnb:open-panel';
    app.commands.addCommand(command, { label: 'mlnb: open panel', execute: () => app.shell.activateById(panel.id) });
    if (palette) palette.addItem({ command, category: 'mlnb' });
  }
};

export default plugin;
