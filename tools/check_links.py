#!/usr/bin/env python3
"""Fail on a dead internal link of the built documentation site.

    python tools/check_links.py SITE_DIR

Checks, in every HTML file of SITE_DIR (what `mkdocs build` wrote), every `href` and `src` that stays
on the site: relative links, root-relative ones, and absolute ones under the site's own URL
(`site_url` of mkdocs.yml). Each must name a file of the site (a folder stands for its
`index.html`); an `#anchor` into a page of the site must name an `id` (or `name`) of that page.
External links (another host, `mailto:` ...) are not fetched. Then every `Docs: <url>` line of a
module docstring in the package (`[tool.nbdev] lib_path`) must name a file of the site.

Prints each dead link with the page (or module) it is on, and exits 1 when there is any.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
_ATTRS = {'href', 'src'}
_SKIP = ('mailto:', 'tel:', 'javascript:', 'data:', 'blob:')


class _Page(HTMLParser):
    "The links and the anchors (`id`, `<a name>`) of one HTML page."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if v is None: continue
            if k in _ATTRS: self.links.append(v.strip())
            elif k == 'id' or (k == 'name' and tag == 'a'): self.anchors.add(v)


def _site_url(config: Path) -> str:
    "`site_url` of mkdocs.yml (tags such as `!!python/name:` are read as nothing)."
    class Loader(yaml.SafeLoader): pass
    Loader.add_multi_constructor('', lambda loader, suffix, node: None)
    url = (yaml.load(config.read_text(encoding='utf-8'), Loader=Loader) or {}).get('site_url') or ''
    return url if url.endswith('/') else url + '/'


def _package(root: Path) -> Path:
    "The package folder: `[tool.nbdev] lib_path` of pyproject.toml."
    doc = tomllib.loads((root / 'pyproject.toml').read_text(encoding='utf-8'))
    return root / doc.get('tool', {}).get('nbdev', {}).get('lib_path', doc.get('project', {}).get('name', ''))


class Site:
    "A built site, its base URL, and the anchors of its pages (parsed once each)."
    def __init__(self, folder: Path, base: str):
        self.folder, self.base = folder.resolve(), urlsplit(base)
        self._pages: dict[Path, _Page] = {}

    def page(self, f: Path) -> _Page:
        if f not in self._pages:
            p = _Page(); p.feed(f.read_text(encoding='utf-8', errors='replace')); self._pages[f] = p
        return self._pages[f]

    def target(self, url: str, page_url: str) -> tuple[Path, str] | None:
        "The site path and fragment `url` (on the page at `page_url`) points to; None when it leaves the site."
        if url.startswith(_SKIP): return None
        parts = urlsplit(urljoin(page_url, url))
        if (parts.scheme, parts.netloc) != (self.base.scheme, self.base.netloc): return None
        if not parts.path.startswith(self.base.path): return Path('/' + parts.path.lstrip('/')), parts.fragment # on the host, off the site
        return self.folder / unquote(parts.path[len(self.base.path):]), parts.fragment

    def problem(self, path: Path, fragment: str) -> str | None:
        "Why `path#fragment` is dead, or None when it resolves."
        path = Path(path)
        if not path.is_relative_to(self.folder): return 'outside the site'
        if path.is_dir(): path = path / 'index.html'
        if not path.is_file(): return f'no file {path.relative_to(self.folder).as_posix()}'
        if fragment and path.suffix == '.html' and unquote(fragment) not in self.page(path).anchors:
            return f'no anchor #{fragment} in {path.relative_to(self.folder).as_posix()}'
        return None

    def url_of(self, f: Path) -> str:
        return f"{self.base.scheme}://{self.base.netloc}{self.base.path}{f.relative_to(self.folder).as_posix()}"


def check_html(site: Site) -> tuple[list[str], int]:
    "Dead internal links of every HTML page ('page: link (why)'), and how many internal links were checked."
    dead, n = [], 0
    for f in sorted(site.folder.rglob('*.html')):
        page_url = site.url_of(f)
        for link in dict.fromkeys(site.page(f).links):
            if not link or link.startswith(_SKIP): continue
            if link.startswith('#') and not link[1:]: continue # "#": the top of this page
            t = site.target(link, page_url)
            if t is None: continue
            n += 1
            why = site.problem(*t)
            if why: dead.append(f"{f.relative_to(site.folder).as_posix()}: {link} ({why})")
    return dead, n


def check_docstrings(site: Site, package: Path) -> tuple[list[str], int]:
    "`Docs:` URLs of the package's module docstrings that name no file of the site, and how many there are."
    dead, n = [], 0
    package = package.resolve()
    for f in sorted(package.rglob('*.py')):
        name = f.relative_to(package.parent).as_posix()
        try: doc = ast.get_docstring(ast.parse(f.read_text(encoding='utf-8')), clean=False) or ''
        except SyntaxError as e: dead.append(f"{name}: cannot be parsed ({e})"); continue
        for url in re.findall(r'^\s*Docs:\s*(\S+)', doc, re.M):
            n += 1
            t = site.target(url, site.url_of(site.folder / 'index.html'))
            why = 'not on the site ' + site.base.geturl() if t is None else site.problem(*t)
            if why: dead.append(f"{name} (module docstring): {url} ({why})")
    return dead, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('site', type=Path, help='the folder mkdocs built')
    ap.add_argument('--base', help='the site\'s URL (default: site_url of mkdocs.yml)')
    ap.add_argument('--package', type=Path, help='the package whose module docstrings are checked (default: [tool.nbdev] lib_path)')
    args = ap.parse_args(argv)
    if not (args.site / 'index.html').is_file():
        print(f"{args.site} holds no index.html: build the site first (mkdocs build --strict -d {args.site}).", file=sys.stderr)
        return 2
    site = Site(args.site, args.base or _site_url(ROOT / 'mkdocs.yml'))
    package = args.package or _package(ROOT)
    (dead, links), (dead_docs, docs) = check_html(site), check_docstrings(site, package)
    dead += dead_docs
    for d in dead: print(f"dead link: {d}")
    pages = sum(1 for _ in site.folder.rglob('*.html'))
    print(f"{links} internal links on {pages} pages, {docs} `Docs:` links of {package.name}/ checked: "
          + (f"{len(dead)} dead." if dead else "none dead."))
    return 1 if dead else 0


if __name__ == '__main__':
    sys.exit(main())
