#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: promtool (Debian's prometheus),
# kcat, openssl (test certificates), Java 17 and Maven (for Kafka and Cassandra, fetched from Maven Central by
# tests/services/*.sh), Dovecot (the IMAP server of tests/services/dovecot.sh), and the Python packages of the downstream-consumer test. Idempotent.
set -euo pipefail

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v dovecot >/dev/null 2>&1 || need_apt+=(dovecot-imapd)
# openssl makes the test servers' certificates (tests/services/tls.sh); the gateway's own OpenSSL
# is built from source by cargo (vendored).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# aiosmtpd: the SMTP server the auto-acknowledgement tests send to (gateway/tests/acks.rs).
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need_apt+=(python3-aiosmtpd)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} from Debian's packages"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import confluent_kafka, jsonschema, referencing' 2>/dev/null; then
  echo "setup: installing confluent-kafka and jsonschema from PyPI"
  python3 -m pip install -q --disable-pip-version-check confluent-kafka jsonschema \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages confluent-kafka jsonschema
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) and rerun" >&2
  exit 1
fi
