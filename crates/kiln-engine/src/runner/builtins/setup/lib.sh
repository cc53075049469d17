# Shared by kiln's built-in setup actions (sourced first).
# A failing setup step says why in one line: on stderr for the log, and as
# the `kiln-reason` output the engine reports as the step's reason.
kiln_fail() {
    printf 'error: %s\n' "$*" >&2
    [ -n "${GITHUB_OUTPUT:-}" ] && printf 'kiln-reason=%s\n' "$*" >> "$GITHUB_OUTPUT"
    exit 1
}

# kiln_version_matches SPEC HAVE: whether version HAVE (1.2.3) satisfies
# SPEC: `*`, `x`, `latest`, an exact or partial version (`3`, `3.13`,
# `3.13.5`, `v20`, `20.x`, `3.13.*`), a comparison (`>=3.9`, `<4`, `>3`,
# `<=3.13`, several joined by spaces or commas), or `~X.Y` / `^X`.
kiln_version_matches() {
    local spec="$1" have="$2" part op v
    spec="${spec//,/ }"
    for part in $spec; do
        part="${part#v}"
        case "$part" in
            '*'|x|X|latest|current|node|stable) continue ;;
            '>='*) op='>='; v="${part#>=}" ;;
            '<='*) op='<='; v="${part#<=}" ;;
            '>'*) op='>'; v="${part#>}" ;;
            '<'*) op='<'; v="${part#<}" ;;
            '=='*) op='='; v="${part#==}" ;;
            '='*) op='='; v="${part#=}" ;;
            '~'*) op='='; v="${part#\~}"; v="${v%.*}" ;;
            '^'*) op='='; v="${part#^}"; v="${v%%.*}" ;;
            *) op='='; v="$part" ;;
        esac
        v="${v#v}"
        # `20.x`, `3.13.*`: a prefix.
        while :; do
            case "$v" in
                *.x|*.X|*.'*') v="${v%.*}" ;;
                *) break ;;
            esac
        done
        case "$v" in
            ''|*[!0-9.]*) return 1 ;;
        esac
        case "$op" in
            '=') case "$have" in "$v"|"$v".*) ;; *) return 1 ;; esac ;;
            '>=') [ "$(printf '%s\n%s\n' "$v" "$have" | sort -V | head -n1)" = "$v" ] || return 1 ;;
            '<=') [ "$(printf '%s\n%s\n' "$v" "$have" | sort -V | tail -n1)" = "$v" ] || return 1 ;;
            '>') [ "$v" != "$have" ] && [ "$(printf '%s\n%s\n' "$v" "$have" | sort -V | head -n1)" = "$v" ] || return 1 ;;
            '<') case "$have" in "$v"|"$v".*) return 1 ;; esac
                 [ "$(printf '%s\n%s\n' "$v" "$have" | sort -V | tail -n1)" = "$v" ] || return 1 ;;
        esac
    done
    return 0
}

# kiln_version_file FILE: the first version a version file names
# (`.nvmrc`, `.python-version`, `.tool-versions`, `package.json`'s
# engines/volta, `pyproject.toml`'s requires-python).
kiln_version_file() {
    local f="$1" tool="$2"
    [ -f "$f" ] || kiln_fail "version file $f does not exist"
    case "$f" in
        *package.json)
            sed -n 's/.*"node"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | head -n1 ;;
        *pyproject.toml)
            sed -n 's/^[[:space:]]*requires-python[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | head -n1 ;;
        *.tool-versions)
            awk -v t="$tool" '$1 == t { print $2; exit }' "$f" ;;
        *)
            grep -v '^[[:space:]]*#' "$f" | grep -v '^[[:space:]]*$' | head -n1 | tr -d '[:space:]' ;;
    esac
}
