#!/usr/bin/env bash
# .venv-karapace: Karapace (compose's schema registry) for the compose boot test, from a Karapace source tree.
#
#   make karapace KARAPACE_SRC=/path/to/karapace-<version>   (the version compose pins; see docker-compose.yml)
#
# Not part of `make install` or CI: Karapace is not on PyPI, and two of its parts come from no package
# registry that CI reaches: its requirements pin Aiven's patched avro as a GitHub tarball, and
# protopacelib (its protobuf support, loaded at import) is a Go c-shared library that needs Go >= 1.21
# and modules from the Go proxy. Here:
#   - the pinned requirements install from PyPI, with PyPI's avro in place of the patched one (Voicenote
#     registers Avro record schemas only; registration, lookup and compatibility checks ran on it);
#   - protopacelib is built with `go` where Go >= 1.21 is on PATH, else a C stub that only lets the import
#     succeed (any protobuf schema would fail; Voicenote sends none). The script says which it built.
set -euo pipefail
src=${KARAPACE_SRC:?KARAPACE_SRC=<a Karapace source tree of the version docker-compose.yml pins>}
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${KARAPACE_VENV:-$repo/.venv-karapace}
pinned=$(sed -n 's#^ *image: ghcr.io/aiven-open/karapace:\(.*\)$#\1#p' "$repo/docker-compose.yml")
test -f "$src/src/karapace/__init__.py" || { echo "$src is not a Karapace source tree (no src/karapace)"; exit 2; }

${PYTHON:-python3} -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
grep -v '^avro @' "$src/requirements/requirements.txt" | sed 's/ *#.*//' | grep -v '^$' > "$venv/karapace-requirements.txt"
"$venv/bin/pip" install -q -r "$venv/karapace-requirements.txt" avro==1.12.0
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/karapace" && cp -r "$src/src/karapace" "$site/karapace"
# setuptools-scm writes karapace/version.py at build time; a source tree has none.
echo "__version__ = \"$pinned\"" > "$site/karapace/version.py"

go_minor=$( (go env GOVERSION 2>/dev/null || true) | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -n "$go_minor" ] && [ "$go_minor" -ge 21 ] && [ -d "$src/go/protopace" ]; then
  (cd "$src/go/protopace" && go build -buildmode=c-shared -o "$site/protopacelib.so" .)
  echo "protopacelib: built with $(go env GOVERSION)"
else
  cc -shared -fPIC -o "$site/protopacelib.so" "$repo/tests/protopace_stub.c"
  echo "protopacelib: C stub (no Go >= 1.21 here): Avro only, protobuf schemas would fail"
fi
"$venv/bin/python" -c "import importlib.util, karapace.version as v, karapace.api.container; assert importlib.util.find_spec('karapace.__main__'); print('karapace', v.__version__, 'in', '$venv')"
