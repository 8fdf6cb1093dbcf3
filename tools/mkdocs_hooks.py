"""mkdocs hooks for mlnb's documentation site (`hooks:` in mkdocs.yml).

- The API reference is every notebook under `nbs/` (`[tool.nbdev] nbs_path`), found when the site is
  built: each becomes the page `api/<name>.html`, named as nbdev names it (`nbdev.config.nbpath2html`:
  `nbs/01_project.ipynb` -> `api/project.html`, `nbs/serving/03_batching.ipynb` -> `api/serving/batching.html`),
  rendered by mkdocs-jupyter without being executed, and appended to the nav as "API reference", sorted
  by file name (numbers in order), one section per folder. Without `nbs/index.ipynb`, `api/index.html`
  is a module map made from the notebooks' titles.
- Every page also gets `<page>.html.md` beside `<page>.html`: a guide's markdown source, a notebook
  converted to markdown. The `Docs:` links nbdev writes into the module docstrings point there.
"""
from __future__ import annotations

import json
import re
from html import unescape
import tomllib
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import CombinedEvent, event_priority
from mkdocs.structure.files import File, Files
from nbdev.config import nbpath2html

API = 'api' # the folder of the API reference in the site
_SKIP = re.compile(r'^[_.]') # nbdev's default: notebooks and folders starting with '_' or '.' are not documented
_PREFIX = re.compile(r'^\d+[a-zA-Z0-9]*_') # the numeric prefix nbpath2html strips


def _nbs_path(config) -> Path:
    "The notebooks folder of the project mkdocs.yml belongs to: `[tool.nbdev] nbs_path` of pyproject.toml."
    root = Path(config.config_file_path).parent
    pyproject = tomllib.loads((root / 'pyproject.toml').read_text(encoding='utf-8'))
    nbs = root / pyproject.get('tool', {}).get('nbdev', {}).get('nbs_path', 'nbs')
    if not nbs.is_dir(): raise PluginError(f"The notebooks folder {nbs} does not exist; set [tool.nbdev] nbs_path in {root / 'pyproject.toml'}.")
    return nbs


def _order(p: Path) -> list:
    "Sort key of a notebook or folder: its name, numbers compared as numbers (`8_x` before `10_x`)."
    return [int(s) if s.isdigit() else s for s in re.split(r'(\d+)', p.name.lower())]


def _src_uri(nbs: Path, nb: Path) -> str:
    "The notebook's page in the site, as an mkdocs source path: `api/<nbpath2html name>.ipynb`."
    return f"{API}/{nbpath2html(nb.relative_to(nbs)).with_suffix('.ipynb').as_posix()}"


def _notebooks(nbs: Path, folder: Path | None = None) -> list:
    "The nav of `folder`: its index first, then notebooks and sub-folders (as sections) by file name."
    folder = folder or nbs
    kids = sorted((p for p in folder.iterdir() if not _SKIP.match(p.name)), key=_order)
    index = [p for p in kids if p.is_file() and p.name == 'index.ipynb']
    nav = []
    for p in index + [p for p in kids if p not in index]:
        if p.is_dir():
            sub = _notebooks(nbs, p)
            if sub: nav.append({_PREFIX.sub('', p.name): sub})
        elif p.suffix == '.ipynb': nav.append(_src_uri(nbs, p))
    return nav


def _all(nbs: Path) -> dict[str, Path]:
    "Every documented notebook: its page's source path -> the notebook. Two notebooks with one page name are refused."
    pages: dict[str, Path] = {}
    def walk(folder):
        for p in sorted(folder.iterdir(), key=_order):
            if _SKIP.match(p.name): continue
            if p.is_dir(): walk(p)
            elif p.suffix == '.ipynb':
                uri = _src_uri(nbs, p)
                if uri in pages:
                    raise PluginError(f"{pages[uri]} and {p} would both be the page {uri[:-len('.ipynb')]}.html "
                                      "(nbdev strips the numeric prefix): rename one of them.")
                pages[uri] = p
    walk(nbs)
    return pages


def _title(nb: Path) -> tuple[str, str]:
    "The notebook's title (`# name`) and subtitle (`> ...`) from its first markdown cell."
    cells = json.loads(nb.read_text(encoding='utf-8')).get('cells', [])
    src = next((''.join(c['source']) for c in cells if c.get('cell_type') == 'markdown'), '')
    title = next((l[2:].strip() for l in src.splitlines() if l.startswith('# ')), nb.stem)
    sub = next((l[1:].strip() for l in src.splitlines() if l.startswith('>')), '')
    return title, sub


def _module_map(pages: dict[str, Path]) -> str:
    "The API reference's front page when `nbs/index.ipynb` does not exist: one line per notebook."
    lines = ['# API reference', '',
             "One page per notebook of `nbs/`: each is the source of one module of the package, with its "
             "examples, which are also its tests.", '', '| page | what it is about |', '|---|---|']
    for uri, nb in pages.items():
        title, sub = _title(nb)
        rel = uri[len(API) + 1:]
        lines.append(f"| [{rel[:-len('.ipynb')]}]({rel}) | {sub.replace('|', '&#124;')} |")
    return '\n'.join(lines) + '\n'


def on_config(config):
    "Append the API reference, found in `nbs/`, to the nav."
    nbs = _nbs_path(config)
    _all(nbs) # refuse two notebooks with one page name before anything is built
    nav = _notebooks(nbs)
    if f'{API}/index.ipynb' not in nav: nav.insert(0, f'{API}/index.md')
    if config.nav is None:
        raise PluginError("mkdocs.yml needs a `nav:` of the guides; the API reference is appended to it.")
    config.nav.append({'API reference': nav})
    return config


@event_priority(100) # before mkdocs-jupyter's on_files, which turns the notebooks into pages
def _add_notebooks(files: Files, config) -> Files:
    "Add each notebook of `nbs/` as the page `api/<name>`, and the module map when there is no `nbs/index.ipynb`."
    pages = _all(_nbs_path(config))
    for uri, nb in pages.items():
        if files.get_file_from_path(uri) is not None:
            raise PluginError(f"{uri} is both a file of {config.docs_dir} and the page of {nb}; remove the first.")
        files.append(File.generated(config, uri, abs_src_path=str(nb)))
    if f'{API}/index.ipynb' not in pages:
        files.append(File.generated(config, f'{API}/index.md', content=_module_map(pages)))
    return files


@event_priority(-100) # after mkdocs-jupyter's on_files
def _keep_source(files: Files, config) -> Files:
    "mkdocs-jupyter wraps each notebook's File without its source path when the file is not in docs_dir: give it back."
    for f in files:
        inner = getattr(f, 'file', None)
        if isinstance(inner, File) and inner.abs_src_path and not f.abs_src_path: f.abs_src_path = inner.abs_src_path
    return files


on_files = CombinedEvent(_add_notebooks, _keep_source)


def on_serve(server, config, builder):
    "`mkdocs serve` rebuilds when a notebook changes."
    server.watch(str(_nbs_path(config)))
    return server


def _headings(html: str) -> list[tuple[str, str]]:
    "(text, id) of each heading of a rendered notebook, in order."
    out = []
    for m in re.finditer(r'<h[1-6] id="([^"]+)"[^>]*>(.*?)</h[1-6]>', html, re.S):
        text = re.sub(r'<a class="anchor-link".*?</a>', '', m.group(2), flags=re.S)
        out.append((unescape(re.sub(r'<[^>]+>', '', text)).strip(), m.group(1)))
    return out


def on_page_content(html: str, page, config, files) -> str:
    "Point a notebook's table of contents at its headings: mkdocs-jupyter makes the two with different rules (ids, code in titles)."
    if not page.file.src_uri.endswith('.ipynb'): return html
    heads, items = _headings(html), []
    def flat(level):
        for item in level: items.append(item); flat(item.children)
    flat(page.toc)
    if len(items) == len(heads): # the same headings, in the same order
        for item, (text, id) in zip(items, heads): item.id, item.title = id, text or item.title
    else:
        ids = {i for _, i in heads}
        for item in items:
            if item.id not in ids: item.id = next((i for t, i in heads if t == item.title), item.id)
    return html


def _markdown(page) -> str:
    "The page as markdown: a guide's source, or the notebook converted by nbconvert."
    if not page.file.src_uri.endswith('.ipynb'): return page.file.content_string
    import nbformat
    from nbconvert import MarkdownExporter
    nb = nbformat.read(page.file.abs_src_path, as_version=4)
    nb.metadata.setdefault('language_info', {}).setdefault('name', 'python') # fenced code says its language (nbdev-clean drops it)
    name = Path(page.file.dest_uri).stem
    body, resources = MarkdownExporter().from_notebook_node(nb, resources={'output_files_dir': f'{name}_files'})
    folder = Path(page.file.abs_dest_path).parent
    for rel, data in resources.get('outputs', {}).items(): # images of the outputs, beside the page
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return body


def on_post_page(output: str, page, config) -> str:
    "Write `<page>.html.md` beside `<page>.html`."
    dest = Path(page.file.abs_dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_name(dest.name + '.md').write_text(_markdown(page), encoding='utf-8')
    return output
