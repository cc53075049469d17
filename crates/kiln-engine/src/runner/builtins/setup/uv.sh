# astral-sh/setup-uv: uv from PyPI, fetched by kiln (KILN_UV_DIR, read-only).
[ -n "${KILN_UV_DIR:-}" ] && [ -x "$KILN_UV_DIR/bin/uv" ] || kiln_fail "uv was not fetched"
have="$("$KILN_UV_DIR/bin/uv" --version | awk '{print $2}')" || kiln_fail "the fetched uv does not run here"
echo "$KILN_UV_DIR/bin" >> "$GITHUB_PATH"
{
    echo "uv-version=$have"
    echo "uv-path=$KILN_UV_DIR/bin/uv"
    echo "uvx-path=$KILN_UV_DIR/bin/uvx"
} >> "$GITHUB_OUTPUT"
{
    echo "UV_CACHE_DIR=${INPUT_CACHE_LOCAL_PATH:-$HOME/.cache/uv}"
    echo "UV_TOOL_DIR=${INPUT_TOOL_DIR:-$HOME/.local/share/uv/tools}"
    echo "UV_TOOL_BIN_DIR=${INPUT_TOOL_BIN_DIR:-$HOME/.local/bin}"
} >> "$GITHUB_ENV"
if [ -n "${INPUT_PYTHON_VERSION:-}" ]; then
    echo "UV_PYTHON=$INPUT_PYTHON_VERSION" >> "$GITHUB_ENV"
fi
if [ "${INPUT_ACTIVATE_ENVIRONMENT:-false}" = true ]; then
    dir="${INPUT_WORKING_DIRECTORY:-$GITHUB_WORKSPACE}"
    UV_PYTHON="${INPUT_PYTHON_VERSION:-}" "$KILN_UV_DIR/bin/uv" venv --quiet "$dir/.venv" ||
        kiln_fail "uv venv $dir/.venv failed"
    echo "$dir/.venv/bin" >> "$GITHUB_PATH"
    echo "VIRTUAL_ENV=$dir/.venv" >> "$GITHUB_ENV"
fi
echo "uv $have (asked for: ${INPUT_VERSION:-latest}) from PyPI"
