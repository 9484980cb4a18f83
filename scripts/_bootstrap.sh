# Sourced by scripts/run and scripts/test: find Python >= 3.12, create .venv, install the project into it.
# Usage: bootstrap [EXTRA]   (EXTRA: an optional-dependencies group such as "test")
# Idempotent: reinstalls only when pyproject.toml, the extra or the interpreter changed.

FWD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FWD_VENV="$FWD_ROOT/.venv"

_fwd_ok_python() {  # prints the interpreter's path when it runs and is 3.12 or newer
    "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1 \
        && "$1" -c 'import sys; print(sys.executable)' 2>/dev/null
}

find_python() {
    local candidate found
    if [ -n "${FWDPROXY_PYTHON:-}" ]; then
        _fwd_ok_python "$FWDPROXY_PYTHON" && return 0
        echo "FWDPROXY_PYTHON=$FWDPROXY_PYTHON is not a working Python 3.12 or newer." >&2
        return 1
    fi
    for candidate in python3.14 python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && found=$(_fwd_ok_python "$candidate"); then
            echo "$found"
            return 0
        fi
    done
    # pyenv installs interpreters that its shims hide unless selected; look at them directly, newest first.
    local root="${PYENV_ROOT:-}"
    [ -z "$root" ] && command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"
    [ -z "$root" ] && root="$HOME/.pyenv"
    if [ -d "$root/versions" ]; then
        for candidate in $(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.[0-9]+\.[0-9]+$' | sort -t. -k1,1nr -k2,2nr -k3,3nr); do
            if found=$(_fwd_ok_python "$root/versions/$candidate/bin/python3"); then
                echo "$found"
                return 0
            fi
        done
    fi
    echo "fwdproxy needs Python 3.12 or newer (mitmproxy 12 requires it) and none was found on PATH or in pyenv; install one (e.g. 'pyenv install 3.12') or set FWDPROXY_PYTHON=/path/to/python3.12." >&2
    return 1
}

bootstrap() {
    local extra="${1:-}" python stamp want
    if [ -x "$FWD_VENV/bin/python" ] && _fwd_ok_python "$FWD_VENV/bin/python" >/dev/null; then
        python="$FWD_VENV/bin/python"
    else
        python=$(find_python) || return 1
        rm -rf "$FWD_VENV"
        echo "fwdproxy: creating .venv with $python" >&2
        "$python" -m venv "$FWD_VENV" || { echo "Could not create a virtualenv with $python (is the venv module installed?)." >&2; return 1; }
    fi
    # mypy cannot follow the editable install's package-dir mapping (addons/ is the package fwdproxy_addons):
    # pyproject's mypy_path points here instead.
    mkdir -p "$FWD_VENV/mypy-path" && ln -sfn "$FWD_ROOT/addons" "$FWD_VENV/mypy-path/fwdproxy_addons"
    stamp="$FWD_VENV/.fwdproxy-installed"
    want="$( (cat "$FWD_ROOT/pyproject.toml"; echo "extra=$extra"; "$FWD_VENV/bin/python" -V) | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && grep -qx "$want" "$stamp" 2>/dev/null; then
        return 0
    fi
    # A stamp for a superset of this extra is as good (e.g. run after test).
    if [ -z "$extra" ] && [ -f "$stamp.test" ] && grep -qx "$( (cat "$FWD_ROOT/pyproject.toml"; echo "extra=test"; "$FWD_VENV/bin/python" -V) | sha256sum | cut -d' ' -f1)" "$stamp.test"; then
        return 0
    fi
    echo "fwdproxy: installing into .venv${extra:+ (with $extra extras)}" >&2
    "$FWD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    local target="$FWD_ROOT"
    [ -n "$extra" ] && target="$FWD_ROOT[$extra]"
    if ! "$FWD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target"; then
        echo "Installing fwdproxy's dependencies into .venv failed (see pip's message above)." >&2
        return 1
    fi
    echo "$want" > "$stamp"
    [ -n "$extra" ] && echo "$want" > "$stamp.$extra"
    return 0
}
