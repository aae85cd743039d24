#!/usr/bin/env bash
# Builds the documentation site with MkDocs (strict: a broken link or a page left out of
# the navigation fails) into build/site.  The README is the site's home page and
# ARCHITECTURE.md its architecture page; their links are rewritten for the site.
#   scripts/docs.sh          build
#   scripts/docs.sh serve    build and serve on http://127.0.0.1:8001
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TINGJI_PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
venv=.venv-docs
stamp="$venv/.installed"
sig=$(sha1sum scripts/docs-requirements.txt | cut -c1-16)
if [[ ! -f $stamp ]] || [[ $(cat "$stamp") != "$sig" ]]; then
  [[ -x $venv/bin/python ]] || "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/docs-requirements.txt
  echo "$sig" > "$stamp"
fi
rm -rf build/docs-src && mkdir -p build && cp -r docs build/docs-src
"$venv/bin/python" - <<'PY'
import re
from pathlib import Path

def site_links(text: str) -> str:
    text = re.sub(r"\]\(docs/", "](", text)
    text = text.replace("](ARCHITECTURE.md)", "](architecture.md)")
    text = text.replace("](README.md)", "](index.md)")
    # files of the repository that are not pages: plain text on the site
    return re.sub(r"\[([^\]]+)\]\((?!https?:|#)([^)]+\.(?:md|py|sh|toml))\)",
                  lambda m: m.group(0) if Path("build/docs-src", m.group(2)).is_file()
                  else f"`{m.group(2)}`" if m.group(1) == m.group(2) else m.group(1), text)

src = Path("build/docs-src")
src.joinpath("index.md").write_text(site_links(Path("README.md").read_text()))
src.joinpath("architecture.md").write_text(site_links(Path("ARCHITECTURE.md").read_text()))
PY
if ! out=$(NO_MKDOCS_2_WARNING=1 "$venv/bin/mkdocs" build --strict -f mkdocs.yml 2>&1); then
  grep -v "^INFO" <<< "$out" >&2
  echo "docs: the strict build failed (a broken link, or a page missing from mkdocs.yml's nav)" >&2
  exit 1
fi
echo "docs: build/site/index.html"
if [[ ${1:-} == serve ]]; then
  NO_MKDOCS_2_WARNING=1 exec "$venv/bin/mkdocs" serve --strict -f mkdocs.yml -a 127.0.0.1:8001
fi
