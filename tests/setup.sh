#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: a C toolchain and perl (the build
# compiles librdkafka and a vendored OpenSSL), promtool (Debian's prometheus), kcat, openssl (test
# certificates), Java 17 and Maven (for Kafka and Cassandra, fetched from Maven Central by
# tests/services/*.sh), Go, Dovecot (the IMAP server of tests/services/dovecot.sh), python3 with
# pip, and the Python packages of the downstream-consumer test. Idempotent.
# Then checks what it cannot install: Go must be 1.24 or later (the Go plugin SDK and examples;
# Debian 12's golang-go is 1.19), Java must be 17 (Kafka needs 17 or later, Cassandra 5.0 runs on
# 11 to 17; tests/services/*.sh run $JAVA, default `java`), and cargo must be there (rustup).
# tests/run-all.sh runs this script: when the default `java` is not 17 but a Java 17 is found under
# /usr/lib/jvm, it stops and prints the JAVA_HOME/PATH to export. Sourced (`. tests/setup.sh`, which
# also leaves `set -euo pipefail` in the sourcing shell), it exports them itself instead.
set -euo pipefail

sourced=0
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then sourced=1; fi

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
need_apt=()
# cc, make and perl build librdkafka and the vendored OpenSSL (cargo build).
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential perl)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if ! command -v python3 >/dev/null 2>&1; then
  need_apt+=(python3 python3-pip)
elif ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
# In /usr/sbin, which a normal user's PATH lacks.
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need_apt+=(dovecot-imapd)
# openssl makes the test servers' certificates (tests/services/tls.sh); the gateway's own OpenSSL
# is built from source by cargo (vendored).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# aiosmtpd: the SMTP server the auto-acknowledgement tests send to (gateway/tests/acks.rs).
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need_apt+=(python3-aiosmtpd)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} from Debian's packages"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's prometheus package starts a Prometheus server on :9090 (the gateway's admin port in
  # the quick start); only its promtool is wanted here.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    $sudo_cmd systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

if ! python3 -c 'import confluent_kafka, jsonschema, referencing' 2>/dev/null; then
  echo "setup: installing confluent-kafka and jsonschema from PyPI"
  python3 -m pip install -q --disable-pip-version-check confluent-kafka jsonschema \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages confluent-kafka jsonschema
fi

# Go 1.24 or later (plugins/sdk-go/go.mod, plugins/examples/go/go.mod). Not downloaded here.
go_version="$(go env GOVERSION 2>/dev/null || true)"
if [[ "$go_version" =~ go([0-9]+)\.([0-9]+) ]] &&
  ((BASH_REMATCH[1] > 1 || (BASH_REMATCH[1] == 1 && BASH_REMATCH[2] >= 24))); then
  :
else
  echo "setup: $(command -v go) is ${go_version:-a Go whose version cannot be read}; the Go plugin SDK and" \
    "examples need Go 1.24 or later (Debian 12's golang-go is 1.19). Install Go >= 1.24" \
    "(https://go.dev/dl/, e.g. into /usr/local/go), put its bin directory first on PATH and rerun" >&2
  return 1 2>/dev/null || exit 1
fi

# Java 17: Kafka needs 17 or later (tests/services/kafka.sh), Cassandra 5.0 runs on 11 to 17
# (tests/services/cassandra.sh). The services run $JAVA, default `java`.
java_major() { # java command; its major version (17, 21, ...), empty when it cannot be told
  { "$1" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \([0-9.]*\).*/\1/p' | sed 's/^1\.//; s/\..*//'; } || true
}
java_cmd="${JAVA:-java}"
java_version="$(java_major "$java_cmd")"
if [ "$java_version" != 17 ]; then
  if [ -n "${JAVA:-}" ]; then
    echo "setup: JAVA=$JAVA is Java ${java_version:-(unknown)}; Kafka and Cassandra need Java 17:" \
      "set JAVA to a Java 17 (e.g. /usr/lib/jvm/java-17-openjdk-amd64/bin/java) or unset it, and rerun" >&2
    return 1 2>/dev/null || exit 1
  fi
  java_home=""
  for candidate in /usr/lib/jvm/*/bin/java; do
    if [ -x "$candidate" ] && [ "$(java_major "$candidate")" = 17 ]; then
      java_home="${candidate%/bin/java}"
      break
    fi
  done
  if [ -z "$java_home" ]; then
    echo "setup: the default java ($(command -v java)) is Java ${java_version:-(unknown)} and no Java 17 was" \
      "found under /usr/lib/jvm; Kafka needs Java 17 or later and Cassandra 5.0 at most 17. Install a" \
      "Java 17 (Debian 12: apt-get install openjdk-17-jre-headless) and rerun" >&2
    return 1 2>/dev/null || exit 1
  fi
  if ((sourced)); then
    echo "setup: the default java is Java ${java_version:-(unknown)}; using Java 17 from $java_home"
    export JAVA_HOME="$java_home"
    export PATH="$JAVA_HOME/bin:$PATH"
  else
    echo "setup: the default java ($(command -v java)) is Java ${java_version:-(unknown)}; Kafka and" \
      "Cassandra need Java 17. Found one in $java_home: run" \
      "export JAVA_HOME=$java_home PATH=$java_home/bin:\$PATH and rerun" \
      "(or source this script: . tests/setup.sh)" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) and rerun" >&2
  return 1 2>/dev/null || exit 1
fi
