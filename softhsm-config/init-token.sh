#!/usr/bin/env bash
# Usage: init-token.sh DIR LABEL
#
# Creates DIR/tokens and DIR/softhsm2.conf (from softhsm2.conf.template), then
# initialises a SoftHSM2 token labelled LABEL in it unless one already exists.
# Prints the path of the config file (export it as SOFTHSM2_CONF).
#
# PINs come from the environment, never from argv of this script:
#   P11KMS_SO_PIN    security officer PIN
#   P11KMS_USER_PIN  user PIN (the one the daemon logs in with)
# softhsm2-util itself only accepts PINs on its command line; it is a
# short-lived process, which is accepted for this setup tool. PINs are never
# echoed. Idempotent; installs nothing (needs softhsm2-util on PATH).
set -euo pipefail

die() { echo "init-token.sh: $*" >&2; exit 1; }

[ "$#" -eq 2 ] || die "usage: init-token.sh DIR LABEL"
dir=$1
label=$2

[ -n "$label" ] || die "LABEL must not be empty"
[ "$(printf '%s' "$label" | wc -c)" -le 32 ] || die "LABEL must be at most 32 bytes"
case "$label" in
    *$'\n'*) die "LABEL must be a single line" ;;
esac
[ -n "${P11KMS_SO_PIN:-}" ] || die "P11KMS_SO_PIN is not set"
[ -n "${P11KMS_USER_PIN:-}" ] || die "P11KMS_USER_PIN is not set"
command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2-util not found (apt-get install softhsm2)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
template="$here/softhsm2.conf.template"
[ -f "$template" ] || die "missing $template"

mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
tokendir="$dir/tokens"

case "$tokendir" in
    *'|'* | *'&'* | *'\'*) die "DIR must not contain '|', '&' or '\\'" ;;
esac
tmp=$(mktemp "$dir/.softhsm2.conf.XXXXXX")
sed "s|^directories.tokendir = @TOKENDIR@\$|directories.tokendir = $tokendir|" "$template" >"$tmp"
mv -f "$tmp" "$conf"
export SOFTHSM2_CONF="$conf"

# Does a token with exactly this label already exist? (labels are blank-padded)
have_label() {
    softhsm2-util --show-slots 2>/dev/null |
        sed -n 's/^[[:space:]]*Label:[[:space:]]\{0,1\}[[:space:]]*//p' |
        sed 's/[[:space:]]*$//' |
        grep -Fxq -- "$1"
}

if ! have_label "$label"; then
    softhsm2-util --init-token --free --label "$label" \
        --so-pin "$P11KMS_SO_PIN" --pin "$P11KMS_USER_PIN" >/dev/null ||
        die "softhsm2-util --init-token failed for label '$label'"
    have_label "$label" || die "token '$label' not visible after initialisation"
fi

printf '%s\n' "$conf"
