#!/usr/bin/env bash
# requirements/*.lock from pyproject.toml: every version pinned, every file's sha256 listed, so
# `make` and deploy/Dockerfile install exactly what was locked (pip --require-hashes).
#
#   requirements/lock.sh            regenerate; keeps every pin the bounds still allow
#   requirements/lock.sh --upgrade  regenerate with the newest versions the bounds allow
#   requirements/lock.sh --check    exit 1 when a lock does not match pyproject.toml (a dependency
#                                   added, removed or re-bounded without `make lock`)
#
# prod.lock is the image (the project's dependencies only); dev.lock adds the `dev` extra for
# `make run`/`make test`, resolved under prod.lock as constraints, so tests run the versions
# production runs. Universal (every platform, Python 3.11 and 3.12), from the default index.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$PWD/.venv/bin/uv}

compile() {
    "$UV" pip compile --quiet pyproject.toml --generate-hashes --universal --python-version 3.11 \
        --custom-compile-command "make lock" "$@"
}

lock_into() {  # $1: a directory holding pyproject.toml and requirements/; the rest: uv flags
    local dir=$1
    shift
    (cd "$dir" && compile "$@" -o requirements/prod.lock \
        && compile "$@" --extra dev -c requirements/prod.lock -o requirements/dev.lock)
}

pins() {  # name==version and markers, one a line: what a resolution decides (hashes aside)
    grep -E '^[a-z0-9]' "$1" | sed -e 's/ *\\$//'
}

if [ "${1:-}" = "--check" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir "$tmp/requirements"
    cp pyproject.toml README.md "$tmp/"
    cp requirements/prod.lock requirements/dev.lock "$tmp/requirements/"
    lock_into "$tmp"  # the committed locks are the preferences: unchanged when still valid
    status=0
    for lock in prod.lock dev.lock; do
        # only the pins: a wheel uploaded later for a pinned version adds a hash, not a change
        if ! diff -u <(pins "requirements/$lock") <(pins "$tmp/requirements/$lock"); then
            status=1
        fi
    done
    if [ $status -ne 0 ]; then
        echo "requirements/*.lock do not match pyproject.toml: run \`make lock\` and commit the locks" >&2
        exit 1
    fi
    echo "requirements/*.lock match pyproject.toml"
    exit 0
fi

lock_into "$PWD" "$@"
