# actions/setup-python: the image's Python, when it is the version asked
# for, in a virtual environment of the job's own (pip installs there, as
# it does after the real action), first on PATH for the rest of the job.
want="${INPUT_PYTHON_VERSION:-}"
if [ -z "$want" ] && [ -n "${INPUT_PYTHON_VERSION_FILE:-}" ]; then
    want="$(kiln_version_file "$INPUT_PYTHON_VERSION_FILE" python)"
fi
if [ -z "$want" ] && [ -f .python-version ]; then
    want="$(kiln_version_file .python-version python)"
fi
command -v python3 >/dev/null 2>&1 || kiln_fail "this job's image has no Python (python3 not found)"
have="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
case "${INPUT_FREETHREADED:-false}" in true) kiln_fail "free-threaded Python is not in this image (it has Python $have)" ;; esac
# Several versions (one per line): each must be here; the last is the default.
for v in ${want:-$have}; do
    case "$v" in
        pypy*|graalpy*) kiln_fail "python-version $v: this image has CPython $have only" ;;
    esac
    kiln_version_matches "$v" "$have" ||
        kiln_fail "python-version $v is not here: this image has Python $have (kiln does not download Python; ask for $have or ${have%.*})"
done
dir="$RUNNER_TOOL_CACHE/Python/$have/x64"
if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir" >/dev/null || kiln_fail "python3 -m venv $dir failed (is python3-venv in the image?)"
fi
if [ "${INPUT_UPDATE_ENVIRONMENT:-true}" != false ]; then
    echo "$dir/bin" >> "$GITHUB_PATH"
    {
        echo "pythonLocation=$dir"
        echo "Python_ROOT_DIR=$dir"
        echo "Python3_ROOT_DIR=$dir"
        echo "PKG_CONFIG_PATH=$dir/lib/pkgconfig"
    } >> "$GITHUB_ENV"
fi
{
    echo "python-version=$have"
    echo "kiln-tool=python@$have"
    echo "python-path=$dir/bin/python"
} >> "$GITHUB_OUTPUT"
echo "Python $have (asked for: ${want:-any}) from the job's image, in a virtual environment at $dir"
"$dir/bin/python" -m pip --version 2>/dev/null || true
