#!/bin/bash
# rustup over the one Rust toolchain of the job's image (kiln). Installing,
# updating or selecting the toolchain the image has succeeds; asking for
# one it does not have fails saying which one there is. Nothing is
# downloaded.
set -u
host=x86_64-unknown-linux-gnu
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
command -v rustc >/dev/null 2>&1 || die "this job's image has no Rust toolchain (rustc not found)"
have="$(rustc --version | awk '{print $2}')"
sysroot="$(rustc --print sysroot)"

check_toolchain() {
    local t="${1%-"$host"}"
    case "$t" in
        stable|"$have"|"${have%.*}"|default) ;;
        beta|nightly|nightly-*|beta-*) die "toolchain $t is not here: this image has Rust $have (stable) only" ;;
        1.*) die "toolchain $t is not here: this image has Rust $have (ask for stable or $have)" ;;
        *) die "toolchain $t is not here: this image has Rust $have (stable) only" ;;
    esac
}
check_component() {
    local c="${1%-preview}"
    c="${c%-"$host"}"
    case "$c" in
        rustc|cargo|rust-std|rust-docs) ;;
        clippy) cargo clippy --version >/dev/null 2>&1 || die "component clippy is not in this image (add rust-clippy to it)" ;;
        rustfmt) command -v rustfmt >/dev/null 2>&1 || die "component rustfmt is not in this image (add rustfmt to it)" ;;
        rust-src) [ -d "$sysroot/lib/rustlib/src" ] || die "component rust-src is not in this image (add rust-src to it)" ;;
        rust-analyzer) command -v rust-analyzer >/dev/null 2>&1 || die "component rust-analyzer is not in this image" ;;
        *) die "component $1 is not in this image (it has rustc $have, cargo$(cargo clippy --version >/dev/null 2>&1 && echo ', clippy')$(command -v rustfmt >/dev/null 2>&1 && echo ', rustfmt'))" ;;
    esac
}
check_target() {
    [ "$1" = "$host" ] || [ -d "$sysroot/lib/rustlib/$1/lib" ] || die "target $1 is not in this image (it has $host)"
}

# `rustup install stable --profile minimal -c clippy,rustfmt -t x`
install_args() {
    local t=() c=() g=()
    while [ $# -gt 0 ]; do
        case "$1" in
            -c|--component|--components) c+=(${2//,/ }); shift 2 ;;
            --component=*|--components=*) v="${1#*=}"; c+=(${v//,/ }); shift ;;
            -t|--target|--targets) g+=(${2//,/ }); shift 2 ;;
            --target=*|--targets=*) v="${1#*=}"; g+=(${v//,/ }); shift ;;
            --profile) shift 2 ;;
            -*) shift ;;
            *) t+=("$1"); shift ;;
        esac
    done
    for x in "${t[@]}"; do check_toolchain "$x"; done
    for x in "${c[@]}"; do check_component "$x"; done
    for x in "${g[@]}"; do check_target "$x"; done
    echo "info: using the image's Rust $have (${t[*]:-stable})"
}

cmd="${1:-}"; [ $# -gt 0 ] && shift
case "$cmd" in
    --version|-V|-v) echo "rustup (kiln: the image's Rust $have; nothing is downloaded)" ;;
    show)
        case "${1:-}" in
            active-toolchain) echo "stable-$host (default)" ;;
            *) printf 'Default host: %s\nrustup home:  (the job image)\n\nstable-%s (default)\n%s\n' "$host" "$host" "$(rustc --version)" ;;
        esac ;;
    toolchain)
        sub="${1:-list}"; [ $# -gt 0 ] && shift
        case "$sub" in
            list) echo "stable-$host (default)" ;;
            install|add|link) install_args "$@" ;;
            *) die "rustup toolchain $sub: this image has one toolchain, Rust $have" ;;
        esac ;;
    install|update|default) install_args "$@" ;;
    override|set|self) echo "info: rustup $cmd: nothing to do (the image's Rust $have)" ;;
    component)
        sub="${1:-list}"; [ $# -gt 0 ] && shift
        case "$sub" in
            add) for x in "$@"; do case "$x" in -*) ;; *) check_component "$x" ;; esac; done ;;
            list) echo "cargo-$host (installed)"; echo "rustc-$host (installed)"; echo "rust-std-$host (installed)"
                  cargo clippy --version >/dev/null 2>&1 && echo "clippy-$host (installed)"
                  command -v rustfmt >/dev/null 2>&1 && echo "rustfmt-$host (installed)"
                  true ;;
            remove) die "rustup component remove: the image's components cannot be removed" ;;
        esac ;;
    target)
        sub="${1:-list}"; [ $# -gt 0 ] && shift
        case "$sub" in
            add) for x in "$@"; do case "$x" in -*) ;; *) check_target "$x" ;; esac; done ;;
            list) echo "$host (installed)" ;;
            *) die "rustup target $sub: not possible on the image's toolchain" ;;
        esac ;;
    run) [ $# -gt 0 ] || die "rustup run TOOLCHAIN COMMAND"; check_toolchain "$1"; shift; exec "$@" ;;
    which) command -v "${1:-}" || die "no ${1:-} here" ;;
    '') die "rustup: a subcommand is needed" ;;
    *) die "rustup $cmd is not something the image's toolchain can do" ;;
esac
