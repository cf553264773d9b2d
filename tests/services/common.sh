# Shared helpers for tests/services/*.sh (sourced, not run).
#
# Each service script sets, before sourcing:
#   SVC        short name used in messages ("kafka", "cassandra")
#   PID_FILE   where the server's pid is kept
#   LOG_FILE   the server's stdout/stderr
#   PROC_MARK  a string that must appear in /proc/PID/cmdline (guards against pid reuse)

SERVICES_DIR="${SERVICES_DIR:-$HOME/.cache/inquiry-gateway/services}"
JAVA="${JAVA:-java}"

say() { printf '[%s] %s\n' "$SVC" "$*" >&2; }

# Print the last 50 log lines and exit non-zero.
die() {
    say "ERROR: $*"
    if [[ -n "${LOG_FILE:-}" && -s "$LOG_FILE" ]]; then
        printf -- '----- last 50 lines of %s -----\n' "$LOG_FILE" >&2
        tail -n 50 "$LOG_FILE" >&2
        printf -- '----- end of log -----\n' >&2
    fi
    exit 1
}

# Exit non-zero without the log tail (for checks made before the server is launched).
fail() {
    say "ERROR: $*"
    exit 1
}

need() { command -v "$1" >/dev/null 2>&1 || fail "'$1' is required but not on PATH${2:+ ($2)}"; }

# Major version of $JAVA (17, 21, 25, ...).
java_major() {
    "$JAVA" -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = \([0-9.]*\).*/\1/p' | sed 's/^1\.//; s/\..*//'
}

require_java() { # min [max]
    need "$JAVA" "set JAVA= to a JDK"
    local v; v="$(java_major)"
    [[ -n "$v" ]] || fail "cannot tell the version of $JAVA"
    (( v >= $1 )) || fail "$JAVA is Java $v; $SVC needs Java $1${2:+..$2} (set JAVA=)"
    if [[ -n "${2:-}" ]] && (( v > $2 )); then fail "$JAVA is Java $v; $SVC supports Java $1..$2 (set JAVA=)"; fi
}

# Pid of the running server, or nothing (stale pid files are removed).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$PROC_MARK"; then
        echo "$pid"
        return 0
    fi
    rm -f "$PID_FILE"
    return 1
}

# Is something listening on 127.0.0.1:PORT?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rss_mib() { # pid
    awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true
}

# SIGTERM, wait up to $1 seconds, then SIGKILL.
stop_server() {
    local timeout="$1" pid
    if ! pid="$(running_pid)"; then
        say "not running"
        return 0
    fi
    say "stopping (pid $pid, SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if (( waited >= timeout * 10 )); then
            say "still alive after ${timeout}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$PID_FILE"
    say "stopped"
}

kill9_server() {
    local pid
    if ! pid="$(running_pid)"; then
        say "not running"
        return 0
    fi
    say "SIGKILL pid $pid (data kept)"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$PID_FILE"
}

# Launch "$@" detached (own session, stdin from /dev/null, output appended to
# LOG_FILE) and record its pid.
launch() {
    mkdir -p "$(dirname "$LOG_FILE")" "$(dirname "$PID_FILE")"
    printf '\n===== %s: %s starting =====\n' "$(date -u +%FT%TZ)" "$SVC" >>"$LOG_FILE"
    # In a non-interactive shell a background child is not a process-group
    # leader, so setsid execs in place and $! is the JVM's own pid.
    setsid "$@" </dev/null >>"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
}

# Copy the artifacts of a generated pom.xml (in $1) into $1/lib with Maven.
maven_fetch() { # dir
    local dir="$1"
    need mvn "install Maven"
    rm -rf "$dir/lib.tmp"
    (
        cd "$dir"
        mvn -q -B -f pom.xml \
            org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
            -DoutputDirectory=lib.tmp -DincludeScope=runtime >mvn.log 2>&1
    ) || { LOG_FILE="$dir/mvn.log" die "mvn dependency:copy-dependencies failed"; }
    rm -rf "$dir/lib"
    mv "$dir/lib.tmp" "$dir/lib"
}
