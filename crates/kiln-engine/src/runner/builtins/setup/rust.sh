# dtolnay/rust-toolchain, actions-rs/toolchain: the image's toolchain, when
# it is the one asked for, with the components and targets asked for.
want="${INPUT_TOOLCHAIN:-$KILN_ACTION_REF}"
case "$want" in
    ''|master|main|v1|v1.*) want=stable ;;
esac
comps="${INPUT_COMPONENTS:-} ${INPUT_COMPONENT:-}"
targets="${INPUT_TARGETS:-} ${INPUT_TARGET:-}"
args=()
for c in ${comps//,/ }; do args+=(--component "$c"); done
for t in ${targets//,/ }; do args+=(--target "$t"); done
out="$(rustup toolchain install "$want" "${args[@]}" 2>&1)" || kiln_fail "${out#error: }"
have="$(rustc --version | awk '{print $2}')"
{
    echo "name=$want"
    echo "kiln-tool=rustc@$have"
    echo "cachekey=$(date -u +%Y%m%d)$(rustc -vV | sha256sum | head -c 12)"
} >> "$GITHUB_OUTPUT"
echo "Rust $have (asked for: $want) from the job's image"
rustc --version
cargo --version
for c in ${comps//,/ }; do
    case "$c" in
        clippy) cargo clippy --version ;;
        rustfmt) rustfmt --version ;;
    esac
done
