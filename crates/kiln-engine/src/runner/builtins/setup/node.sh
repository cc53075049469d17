# actions/setup-node: the image's Node.js when it is the version asked
# for; otherwise kiln fetches that version from the npm registry (host-side,
# integrity-checked) and runs this again with KILN_NODE_DIR set.
want="${INPUT_NODE_VERSION:-}"
if [ -z "$want" ] && [ -n "${INPUT_NODE_VERSION_FILE:-}" ]; then
    want="$(kiln_version_file "$INPUT_NODE_VERSION_FILE" nodejs)"
fi
case "${INPUT_ARCHITECTURE:-x64}" in x64|amd64|'') ;; *) kiln_fail "architecture ${INPUT_ARCHITECTURE}: runners here are x64" ;; esac
if [ -n "${KILN_NODE_DIR:-}" ]; then
    have="$("$KILN_NODE_DIR/bin/node" --version)" || kiln_fail "the fetched Node.js does not run here"
    have="${have#v}"
    case "$want" in lts/*|'') ;; *) kiln_version_matches "$want" "$have" || kiln_fail "node-version $want: the registry's Node.js $have does not match" ;; esac
    echo "$KILN_NODE_DIR/bin" >> "$GITHUB_PATH"
    echo "node-version=v$have" >> "$GITHUB_OUTPUT"
    echo "Node.js $have (asked for: ${want:-any}) from the npm registry's $KILN_NODE_PACKAGE; npm $(PATH="$KILN_NODE_DIR/bin:$PATH" npm --version 2>/dev/null || echo '(none)') as the job's machine has it"
    exit 0
fi
download() {
    if [ "${KILN_NODE_DOWNLOAD:-0}" = 1 ]; then
        echo "kiln-download=${want:-*}" >> "$GITHUB_OUTPUT"
        echo "$1: fetching it from the npm registry"
        exit 0
    fi
    kiln_fail "$1"
}
command -v node >/dev/null 2>&1 || download "this job's image has no Node.js"
have="$(node --version)"; have="${have#v}"
major="${have%%.*}"
case "$want" in
    '') ;;
    lts/*) download "node-version $want is not what this image has (Node.js $have)" ;;
    *)
        kiln_version_matches "$want" "$have" ||
            download "node-version $want is not here: this image has Node.js $have" ;;
esac
{
    echo "node-version=v$have"
    echo "kiln-tool=node@$have"
} >> "$GITHUB_OUTPUT"
echo "Node.js $have (asked for: ${want:-any}) and npm $(npm --version 2>/dev/null || echo '(none)') from the job's image"
