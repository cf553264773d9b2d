#!/usr/bin/env bash
# Test TLS material for the servers of the test suite: a private CA and one server certificate
# for 127.0.0.1 / localhost, made with openssl (Debian's package) on first use and kept.
#
# Usage: tests/services/tls.sh ensure|path
#   ensure   create what is missing, then print the directory
#   path     print the directory (does not create anything)
#
# Files, under ${SERVICES_DIR:-$HOME/.cache/inquiry-gateway/services}/tls:
#   ca.pem            the CA certificate clients trust (the gateway's ssl.ca.location / ca_file)
#   ca.key            the CA's key (only for signing server.pem)
#   server.pem        the server certificate (subjectAltName IP:127.0.0.1, DNS:localhost)
#   server.key        its key (PKCS#8, unencrypted)
#   server.p12        server.pem + server.key + ca.pem as PKCS#12, password in keystore.password
#   keystore.password the PKCS#12 password (Kafka's and Cassandra's keystores)
set -euo pipefail

SVC=tls
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"
DIR="$SERVICES_DIR/tls"

ensure() {
    need openssl "apt-get install openssl"
    mkdir -p "$DIR"
    if [[ ! -s "$DIR/server.p12" || ! -s "$DIR/ca.pem" || ! -s "$DIR/keystore.password" ]]; then
        local work; work="$(mktemp -d "$DIR/.new.XXXXXX")"
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=inquiry-gateway test CA" \
            -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
            -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$work/ext"
        openssl x509 -req -sha256 -days 3650 -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
            -CAcreateserial -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null
        printf 'test-keystore-%s' "$(head -c 9 /dev/urandom | base64 | tr '+/' 'xy')" >"$work/keystore.password"
        openssl pkcs12 -export -name server -in "$work/server.pem" -inkey "$work/server.key" \
            -certfile "$work/ca.pem" -out "$work/server.p12" -passout "file:$work/keystore.password"
        rm -f "$work/server.csr" "$work/ext" "$work/ca.srl"
        chmod 600 "$work"/*.key "$work/keystore.password"
        mv "$work"/* "$DIR/"
        rmdir "$work"
        say "made a test CA and a server certificate for 127.0.0.1 in $DIR"
    fi
    echo "$DIR"
}

case "${1:-}" in
    ensure) ensure ;;
    path) echo "$DIR" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
