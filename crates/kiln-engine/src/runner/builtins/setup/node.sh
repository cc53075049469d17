# actions/setup-node: the image's Node.js, when it is the version asked for.
want="${INPUT_NODE_VERSION:-}"
if [ -z "$want" ] && [ -n "${INPUT_NODE_VERSION_FILE:-}" ]; then
    want="$(kiln_version_file "$INPUT_NODE_VERSION_FILE" nodejs)"
fi
command -v node >/dev/null 2>&1 || kiln_fail "this job's image has no Node.js (node not found)"
have="$(node --version)"; have="${have#v}"
major="${have%%.*}"
case "${INPUT_ARCHITECTURE:-x64}" in x64|amd64|'') ;; *) kiln_fail "architecture ${INPUT_ARCHITECTURE}: runners here are x64" ;; esac
case "$want" in
    '') ;;
    lts/*)
        # An even major is a long-term-support line.
        [ $((major % 2)) -eq 0 ] ||
            kiln_fail "node-version $want: this image has Node.js $have, which is not an LTS line"
        echo "node-version $want: the image's Node.js $have (an LTS line; kiln does not download Node.js)" ;;
    *)
        kiln_version_matches "$want" "$have" ||
            kiln_fail "node-version $want is not here: this image has Node.js $have (kiln does not download Node.js; ask for $major or $have)" ;;
esac
echo "node-version=v$have" >> "$GITHUB_OUTPUT"
echo "Node.js $have (asked for: ${want:-any}) and npm $(npm --version 2>/dev/null || echo '(none)') from the job's image"
