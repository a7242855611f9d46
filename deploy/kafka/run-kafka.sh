#!/usr/bin/env bash
# Run one Apache Kafka 4.x node in KRaft mode (combined broker+controller) from Maven Central jars.
#
#   run-kafka.sh resolve                                   fetch the jars into target/lib (idempotent)
#   run-kafka.sh start      [--port P] [--dir D] [...]     daemon: format, start, wait until ready
#   run-kafka.sh stop       [--port P] [--dir D]           SIGTERM, wait, SIGKILL after --timeout
#   run-kafka.sh status     [--port P] [--dir D]           exit 0 when the node of that dir runs
#   run-kafka.sh foreground [--port P] [--dir D] [...]     format, then exec the broker in this process
#   run-kafka.sh version                                   print the Kafka version of the resolved jars
#   run-kafka.sh cluster start --nodes 3 --port P --dir D  a KRaft cluster on this machine: node N serves
#                                                          clients on P+N-1 and its controller on
#                                                          C+N-1 (C = --controller-port, default P+nodes);
#                                                          every node is a voter of the controller
#                                                          quorum; one cluster id formatted into all;
#                                                          storage in D/node-N; prints the bootstrap list
#   run-kafka.sh cluster stop-node N  --dir D              stop node N (its storage stays)
#   run-kafka.sh cluster start-node N --dir D              start node N again on the same storage
#   run-kafka.sh cluster status|stop  --dir D              list the nodes / stop them all
#
#   --auth scram (start, foreground, cluster start): clients must log in with SASL/SCRAM-SHA-512 and
#   every request is checked against ACLs (KRaft's StandardAuthorizer, allow.everyone.if.no.acl.found
#   =false). Credentials are generated once (D/secrets.env, mode 0600) for the principals admin (the
#   super user; also the brokers' own login), mutator, novelty, solver, archivist, trainer and reader,
#   created as SCRAM users when the storage is formatted, and written as Java client properties files
#   D/clients/<principal>.properties (mode 0600). The controller listener stays on 127.0.0.1 and takes
#   SASL/PLAIN logins of the internal principal `controller` only. A dir formatted with --auth scram
#   stays secured on every later start. ACLs: `sparq topics create --acls` (docs/security.md).
#
# Options:
#   --port P              client (PLAINTEXT) port, default 19092
#   --controller-port C   KRaft controller port, default P+1
#   --dir D               state dir (config, data, log, pid), default ${TMPDIR:-/tmp}/sparq-kafka-P;
#                         a dir that was formatted before keeps its topics on the next start
#   --timeout S           start: seconds to wait for readiness (120); stop: seconds before SIGKILL (30)
#   --set KEY=VALUE       extra broker setting, repeatable (wins over the built-in defaults)
#   --nodes N             cluster start: number of nodes (default 3); topics default to replication
#                         min(3, N) with min.insync.replicas min(2, N)
#   --auth none|scram     none (default): PLAINTEXT, no authorisation; scram: see above
#   --tls                 with --auth scram: the client listener (and the brokers' own traffic) is
#                         SASL_SSL; a CA and a broker key pair (CN localhost, SAN 127.0.0.1) are made
#                         with keytool in D/tls, the clients trust D/tls/ca.pem (ssl.truststore.type=PEM)
#
# Environment: JAVA_HOME or JAVA (java binary), MVN (maven binary), SPARQ_KAFKA_LIB (a folder of
# Kafka jars to use instead of resolving, e.g. the libs/ of a Kafka distribution),
# KAFKA_HEAP_OPTS (default "-Xms128m -Xmx512m"; cluster nodes "-Xms64m -Xmx384m"), KAFKA_JVM_OPTS (extra JVM flags),
# KAFKA_LOG_LEVEL (root log level, default INFO).
#
# Exit codes: 0 ok, 1 failure (the log tail is printed on stderr), 2 bad usage,
# 3 a required tool (java, mvn) is missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
LIB="${SPARQ_KAFKA_LIB:-$HERE/target/lib}"
STAMP="$LIB/.resolved"
READY_MARK="Kafka Server started"

die() { echo "run-kafka: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2; }
missing() { echo "run-kafka: missing: $1 ($2)" >&2; exit 3; }

java_bin() {
    if [[ -n "${JAVA:-}" ]]; then echo "$JAVA"
    elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then echo "$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then command -v java
    else missing java "install a Java 17+ runtime or set JAVA_HOME"
    fi
}

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

resolve() {
    # Jars given from outside: nothing to resolve, but they must be there.
    if [[ -n "${SPARQ_KAFKA_LIB:-}" ]]; then
        compgen -G "$LIB/kafka_*.jar" >/dev/null || die "SPARQ_KAFKA_LIB=$LIB holds no kafka_*.jar"
        return 0
    fi
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(pom_hash)" ]] && return 0
    local mvn="${MVN:-mvn}"
    command -v "$mvn" >/dev/null 2>&1 || missing mvn "install Apache Maven or set MVN, or point SPARQ_KAFKA_LIB at a folder of Kafka jars"
    mkdir -p "$HERE/target"
    # One resolver at a time (parallel test runs share this folder).
    exec 9>"$HERE/target/.resolve.lock"
    flock 9
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(pom_hash)" ]]; then exec 9>&-; return 0; fi
    echo "run-kafka: resolving Kafka jars with Maven into $LIB" >&2
    # Resolve into a fresh folder, then swap it in: a broker running from the old jars keeps them open.
    local out tmp="$LIB.new.$$"
    rm -rf "$tmp"
    # Released artifacts already in ~/.m2 are not fetched again, so this also works offline.
    if ! out="$("$mvn" -q -B -Dstyle.color=never -f "$POM" \
            org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
            -Dkafka.lib.dir="$tmp" 2>&1)"; then
        rm -rf "$tmp"
        exec 9>&-
        echo "$out" | tail -n 40 >&2
        die "maven could not resolve $POM (no network and an empty ~/.m2?)"
    fi
    rm -rf "$LIB.old"
    if [[ -e "$LIB" ]]; then mv "$LIB" "$LIB.old"; fi
    mv "$tmp" "$LIB"
    rm -rf "$LIB.old"
    pom_hash >"$STAMP"
    exec 9>&-
}

kafka_version() {
    local jar
    jar="$(compgen -G "$LIB/kafka_*.jar" | grep -v -e '-test' -e '-sources' | head -n1 || true)"
    [[ -n "$jar" ]] || die "no kafka_*.jar in $LIB (run: $0 resolve)"
    jar="$(basename "$jar" .jar)"
    echo "${jar#kafka_*-}"
}

# ---- options -------------------------------------------------------------------------------------
CMD="${1:-}"; [[ -n "$CMD" ]] || usage; shift
SUB=""; NODE=""
if [[ "$CMD" == cluster ]]; then
    SUB="${1:-}"; [[ -n "$SUB" ]] || usage; shift
    if [[ "$SUB" == stop-node || "$SUB" == start-node ]]; then
        NODE="${1:-}"; [[ "$NODE" =~ ^[0-9]+$ ]] || { echo "run-kafka: cluster $SUB needs a node number" >&2; exit 2; }
        shift
    fi
fi
CPORT_SET=""; PORT=19092; CPORT=""; DIR=""; TIMEOUT=""; EXTRA=(); NODES=3; PORT_SET=""
NODE_ID=1; VOTERS=""; REPL=1; MIN_ISR=1; AUTH=""; AUTH_DIR=""; TLS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
        --port) PORT="${2:?--port needs a value}"; PORT_SET=1; shift 2 ;;
        --controller-port) CPORT="${2:?--controller-port needs a value}"; CPORT_SET="$CPORT"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --tls) TLS=1; shift ;;
        --auth) AUTH="${2:?--auth needs a value}"; shift 2
                [[ "$AUTH" == none || "$AUTH" == scram ]] || { echo "run-kafka: --auth must be none or scram" >&2; exit 2; } ;;
        --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
        --set) [[ "${2:-}" == *=* ]] || { echo "run-kafka: --set needs KEY=VALUE" >&2; exit 2; }
               EXTRA+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        *) echo "run-kafka: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "run-kafka: --port must be a number" >&2; exit 2; }
if [[ -n "$TLS" ]]; then
    [[ "$AUTH" == scram ]] || { echo "run-kafka: --tls needs --auth scram" >&2; exit 2; }
    AUTH=scram-tls
fi
CPORT="${CPORT:-$((PORT + 1))}"
[[ "$CPORT" =~ ^[0-9]+$ ]] || { echo "run-kafka: --controller-port must be a number" >&2; exit 2; }
DIR="${DIR:-${TMPDIR:-/tmp}/sparq-kafka-$PORT}"
[[ -d "$DIR" ]] && DIR="$(cd "$DIR" && pwd)"
PIDFILE="$DIR/kafka.pid"
LOG="$DIR/kafka.log"
PROPS="$DIR/server.properties"
LOG4J="$DIR/log4j2.properties"

# ---- node set-up ---------------------------------------------------------------------------------
write_config() {
    mkdir -p "$DIR/data"
    DIR="$(cd "$DIR" && pwd)"; PIDFILE="$DIR/kafka.pid"; LOG="$DIR/kafka.log"
    PROPS="$DIR/server.properties"; LOG4J="$DIR/log4j2.properties"
    local client=PLAINTEXT ctrl=PLAINTEXT
    [[ "$AUTH" == scram* ]] && client=SASL_PLAINTEXT ctrl=SASL_PLAINTEXT
    [[ "$AUTH" == scram-tls ]] && client=SASL_SSL
    # server.properties holds the brokers' own passwords when secured: readable by the owner only.
    if [[ "$AUTH" == scram* ]]; then : >"$PROPS"; chmod 600 "$PROPS"; fi
    cat >"$PROPS" <<EOF
# Written by run-kafka.sh: a combined KRaft broker+controller (one node, or one of a cluster).
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=${VOTERS:-1@127.0.0.1:$CPORT}
listeners=$client://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=$client://127.0.0.1:$PORT
inter.broker.listener.name=$client
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:$ctrl,$client:$client
log.dirs=$DIR/data
auto.create.topics.enable=true
delete.topic.enable=true
num.partitions=1
default.replication.factor=$REPL
min.insync.replicas=$MIN_ISR
# Internal topics: replicated like the others, few partitions (fast first join and first txn).
offsets.topic.replication.factor=$REPL
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$REPL
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$REPL
share.coordinator.state.topic.min.isr=$MIN_ISR
# A stopped node's partitions move back to it once it is in sync again.
auto.leader.rebalance.enable=true
leader.imbalance.check.interval.seconds=10
group.initial.rebalance.delay.ms=0
# Compaction that happens within a test: the cleaner wakes every second; topics set
# segment.ms / min.cleanable.dirty.ratio themselves.
log.cleaner.enable=true
log.cleaner.threads=1
log.cleaner.backoff.ms=1000
log.cleaner.dedupe.buffer.size=16777216
log.retention.check.interval.ms=10000
# Modest threads: 2-core machines run tests beside the broker.
num.network.threads=2
num.io.threads=2
background.threads=4
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
EOF
    if [[ "$AUTH" == scram* ]]; then auth_config "$client" >>"$PROPS"; fi
    local kv
    for kv in "${EXTRA[@]+"${EXTRA[@]}"}"; do echo "$kv" >>"$PROPS"; done
    cat >"$LOG4J" <<EOF
status = warn
name = sparq-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${KAFKA_LOG_LEVEL:-INFO}
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
# The full config dump of every component (thousands of lines); server.properties has ours.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
}

# ---- authentication and authorisation (--auth scram) ------------------------------------------------
PRINCIPALS=(admin mutator novelty solver archivist trainer reader)

auth_resolve() {
    # The auth mode of $AUTH_DIR: what it was set up with wins; asking for another is an error.
    local saved=""
    [[ -f "$AUTH_DIR/auth.mode" ]] && saved="$(cat "$AUTH_DIR/auth.mode")"
    # storage formatted before --auth existed: open
    [[ -z "$saved" && -f "$DIR/data/meta.properties" ]] && saved=none
    if [[ -n "$saved" && -n "$AUTH" && "$AUTH" != "$saved" ]]; then
        die "$AUTH_DIR was set up with --auth ${saved/-tls/ --tls}; it cannot start with --auth ${AUTH/-tls/ --tls} (use a new --dir)"
    fi
    AUTH="${saved:-${AUTH:-none}}"
    echo "$AUTH" >"$AUTH_DIR/auth.mode"
}

random_secret() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 24; }

tls_setup() {
    # Once per $AUTH_DIR: a CA and a broker key pair signed by it (keytool; store passwords via the
    # environment, never argv). Brokers use tls/broker.p12; everyone trusts tls/ca.pem.
    local tls="$AUTH_DIR/tls" kt
    [[ -s "$tls/broker.p12" && -s "$tls/ca.pem" ]] && return 0
    kt="$(dirname "$JAVA_BIN")/keytool"; [[ -x "$kt" ]] || kt="$(command -v keytool || true)"
    [[ -n "$kt" ]] || missing keytool "a JDK's keytool makes the TLS certificates"
    rm -rf "$tls.new"; ( umask 077; mkdir -p "$tls.new" )
    export SPARQ_TLS_STOREPASS="$TLS_PW"
    {
        "$kt" -genkeypair -alias ca -dname "CN=sparq-kafka-ca" -keyalg RSA -keysize 2048 -validity 3650 \
            -ext bc:c -keystore "$tls.new/ca.p12" -storetype PKCS12 -storepass:env SPARQ_TLS_STOREPASS &&
        "$kt" -exportcert -rfc -alias ca -keystore "$tls.new/ca.p12" -storepass:env SPARQ_TLS_STOREPASS \
            -file "$tls.new/ca.pem" &&
        "$kt" -genkeypair -alias broker -dname "CN=localhost" -keyalg RSA -keysize 2048 -validity 3650 \
            -keystore "$tls.new/broker.p12" -storetype PKCS12 -storepass:env SPARQ_TLS_STOREPASS &&
        "$kt" -certreq -alias broker -keystore "$tls.new/broker.p12" -storepass:env SPARQ_TLS_STOREPASS \
            -file "$tls.new/broker.csr" &&
        "$kt" -gencert -alias ca -keystore "$tls.new/ca.p12" -storepass:env SPARQ_TLS_STOREPASS -rfc \
            -infile "$tls.new/broker.csr" -outfile "$tls.new/broker.crt" -validity 3650 \
            -ext SAN=ip:127.0.0.1,dns:localhost &&
        "$kt" -importcert -noprompt -alias ca -keystore "$tls.new/broker.p12" -storepass:env SPARQ_TLS_STOREPASS \
            -file "$tls.new/ca.pem" &&
        "$kt" -importcert -noprompt -alias broker -keystore "$tls.new/broker.p12" -storepass:env SPARQ_TLS_STOREPASS \
            -file "$tls.new/broker.crt"
    } >>"$LOG" 2>&1 || { unset SPARQ_TLS_STOREPASS; tail -n 20 "$LOG" >&2; die "keytool could not make the TLS certificates"; }
    unset SPARQ_TLS_STOREPASS
    chmod 600 "$tls.new"/*; chmod 644 "$tls.new/ca.pem"
    rm -rf "$tls"; mv "$tls.new" "$tls"
}

auth_secrets() {
    # Generate the credentials once (secrets.env, 0600) and the client properties files; load them.
    # The dirs become owner-only: the broker's log and storage show the SCRAM users' salted keys.
    mkdir -p "$AUTH_DIR"
    chmod 700 "$AUTH_DIR" "$DIR"
    local secrets="$AUTH_DIR/secrets.env" name file pw
    if [[ ! -s "$secrets" ]]; then
        ( umask 077
          { echo "CONTROLLER_PW=$(random_secret)"; echo "TLS_PW=$(random_secret)"
            for name in "${PRINCIPALS[@]}"; do echo "PW_$name=$(random_secret)"; done
          } >"$secrets.tmp" )
        mv "$secrets.tmp" "$secrets"
    fi
    # shellcheck disable=SC1090
    source "$secrets"
    local protocol=SASL_PLAINTEXT trust=""
    if [[ "$AUTH" == scram-tls ]]; then
        grep -q '^TLS_PW=' "$secrets" || { echo "TLS_PW=$(random_secret)" >>"$secrets"; source "$secrets"; }
        tls_setup
        protocol=SASL_SSL
        trust=$'ssl.truststore.type=PEM\nssl.truststore.location='"$AUTH_DIR/tls/ca.pem"
    fi
    ( umask 077; mkdir -p "$AUTH_DIR/clients" )
    chmod 700 "$AUTH_DIR/clients"
    for name in "${PRINCIPALS[@]}"; do
        file="$AUTH_DIR/clients/$name.properties"; pw="PW_$name"
        ( umask 077
          cat >"$file.tmp" <<EOF
# Kafka client login of principal '$name' (written by run-kafka.sh; keep it private).
security.protocol=$protocol
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$name" password="${!pw}";
${trust}
EOF
        )
        mv "$file.tmp" "$file"
    done
}

auth_config() {
    # The broker settings of --auth scram (appended to server.properties); $1 is the client listener.
    local name="${1,,}"
    cat <<EOF
# --auth scram: SCRAM-SHA-512 logins on the client listener (the brokers log in to each other as admin),
# SASL/PLAIN of the internal principal 'controller' on the controller listener, ACLs for everything else.
listener.name.$name.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.$name.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$PW_admin";
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="$CONTROLLER_PW" user_controller="$CONTROLLER_PW";
sasl.mechanism.controller.protocol=PLAIN
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:controller
allow.everyone.if.no.acl.found=false
EOF
    if [[ "$AUTH" == scram-tls ]]; then
        cat <<EOF
# --tls: the client listener and the brokers' own traffic are TLS; the certificate is for 127.0.0.1 / localhost.
ssl.keystore.type=PKCS12
ssl.keystore.location=$AUTH_DIR/tls/broker.p12
ssl.keystore.password=$TLS_PW
ssl.key.password=$TLS_PW
ssl.truststore.type=PEM
ssl.truststore.location=$AUTH_DIR/tls/ca.pem
EOF
    fi
}

random_cluster_id() {
    # A Kafka Uuid: 16 random bytes, base64url without padding, not starting with '-'.
    local id
    while :; do
        id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && { echo "$id"; return; }
    done
}

format_storage() {
    [[ -f "$DIR/data/meta.properties" ]] && return 0
    [[ -f "$DIR/cluster.id" ]] || random_cluster_id >"$DIR/cluster.id"
    # The tool's arguments go in a java @argfile (0600, removed afterwards): the SCRAM users'
    # passwords never appear on a command line.
    local args="$DIR/format.args" name pw rc=0
    ( umask 077
      { printf '%s\n' kafka.tools.StorageTool format -t "$(cat "$DIR/cluster.id")" -c "\"$PROPS\"" --ignore-formatted
        if [[ "$AUTH" == scram* ]]; then
            for name in "${PRINCIPALS[@]}"; do
                pw="PW_$name"; printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' "$name" "${!pw}"
            done
        fi
      } >"$args" )
    "$JAVA_BIN" -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$LOG4J" -cp "$LIB/*" "@$args" \
        >>"$LOG" 2>&1 || rc=$?
    rm -f "$args"
    ((rc == 0)) || { tail -n 30 "$LOG" >&2; die "formatting storage in $DIR/data failed"; }
}

java_cmd() {
    # shellcheck disable=SC2206  # word splitting of the option strings is intended
    JAVA_CMD=("$JAVA_BIN" ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J"
        ${KAFKA_JVM_OPTS:-}
        -cp "$LIB/*" kafka.Kafka "$PROPS")
}

node_pid() {
    # The pid of this dir's running broker, or nothing.
    local pid
    [[ -f "$PIDFILE" ]] || return 0
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$PROPS"; then
        echo "$pid"
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() {
    local pid="$1" deadline=$((SECONDS + ${TIMEOUT:-120}))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$LOG" >&2
            die "the broker exited during start-up (log: $LOG)"
        fi
        if grep -qF "$READY_MARK" "$LOG" 2>/dev/null && port_open "$PORT"; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 40 "$LOG" >&2
    stop_node 10 || true
    die "the broker was not ready within ${TIMEOUT:-120}s (log: $LOG)"
}

stop_node() {
    local grace="${1:-30}" pid deadline
    pid="$(node_pid)"
    if [[ -z "$pid" ]]; then rm -f "$PIDFILE"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run-kafka: broker $pid ignored SIGTERM for ${grace}s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PIDFILE"
}

prepare() {
    JAVA_BIN="$(java_bin)"
    resolve
    mkdir -p "$DIR"
    AUTH_DIR="${AUTH_DIR:-$(cd "$DIR" && pwd)}"
    auth_resolve
    if [[ "$AUTH" == scram* ]]; then auth_secrets; fi
    write_config
    [[ -z "$(node_pid)" ]] || die "a broker already runs for $DIR (pid $(node_pid)); stop it first"
    if port_open "$PORT"; then die "port $PORT is already in use"; fi
    if port_open "$CPORT"; then die "controller port $CPORT is already in use"; fi
    : >"$LOG"
    format_storage
    java_cmd
}

launch_daemon() {
    # The broker writes its own pid (exec keeps it), in a new session away from this terminal.
    rm -f "$PIDFILE"
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" "${JAVA_CMD[@]}" \
        </dev/null >>"$LOG" 2>&1 &
    for _ in $(seq 100); do [[ -s "$PIDFILE" ]] && break; sleep 0.05; done
    [[ -s "$PIDFILE" ]] || die "the broker did not write $PIDFILE"
}

# ---- cluster -------------------------------------------------------------------------------------
CLUSTER_DIR=""
cluster_load() {
    mkdir -p "$DIR"; CLUSTER_DIR="$(cd "$DIR" && pwd)"
    if [[ -f "$CLUSTER_DIR/cluster.env" ]]; then
        # shellcheck disable=SC1091
        source "$CLUSTER_DIR/cluster.env"
    else
        [[ "$SUB" == start ]] || die "no cluster in $CLUSTER_DIR (run: $0 cluster start --dir $CLUSTER_DIR)"
        [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "run-kafka: --nodes must be >= 1" >&2; exit 2; }
        C_NODES="$NODES"; C_PORT="$PORT"; C_CPORT="${CPORT_SET:-$((PORT + NODES))}"
        printf 'C_NODES=%s\nC_PORT=%s\nC_CPORT=%s\n' "$C_NODES" "$C_PORT" "$C_CPORT" >"$CLUSTER_DIR/cluster.env"
        random_cluster_id >"$CLUSTER_DIR/cluster.id"
    fi
}

cluster_node() {
    # Point the single-node globals at node $1 of the cluster.
    local n="$1" i voters=""
    ((n >= 1 && n <= C_NODES)) || die "node $n is not in 1..$C_NODES"
    for ((i = 1; i <= C_NODES; i++)); do voters+="${voters:+,}$i@127.0.0.1:$((C_CPORT + i - 1))"; done
    NODE_ID="$n"; VOTERS="$voters"; PORT=$((C_PORT + n - 1)); CPORT=$((C_CPORT + n - 1))
    REPL=$((C_NODES < 3 ? C_NODES : 3)); MIN_ISR=$((C_NODES < 2 ? 1 : 2))
    DIR="$CLUSTER_DIR/node-$n"; mkdir -p "$DIR"; AUTH_DIR="$CLUSTER_DIR"
    cp "$CLUSTER_DIR/cluster.id" "$DIR/cluster.id"
    PIDFILE="$DIR/kafka.pid"; LOG="$DIR/kafka.log"; PROPS="$DIR/server.properties"; LOG4J="$DIR/log4j2.properties"
    export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms64m -Xmx384m}"
}

cluster_bootstrap() {
    local i out=""
    for ((i = 1; i <= C_NODES; i++)); do out+="${out:+,}127.0.0.1:$((C_PORT + i - 1))"; done
    echo "$out"
}

cluster_cmd() {
    cluster_load
    local n pids=()
    case "$SUB" in
        start)
            for ((n = 1; n <= C_NODES; n++)); do
                cluster_node "$n"
                if [[ -n "$(node_pid)" ]]; then pids+=("$(node_pid)"); continue; fi
                prepare; launch_daemon; pids+=("$(cat "$PIDFILE")")
            done
            # The nodes wait for each other (quorum), so wait for readiness only after all started.
            for ((n = 1; n <= C_NODES; n++)); do cluster_node "$n"; wait_ready "${pids[n - 1]}"; done
            cluster_bootstrap ;;
        start-node)
            cluster_node "$NODE"
            [[ -z "$(node_pid)" ]] || { cluster_bootstrap; return 0; }
            prepare; launch_daemon; wait_ready "$(cat "$PIDFILE")"
            cluster_bootstrap ;;
        stop-node)
            cluster_node "$NODE"; stop_node "${TIMEOUT:-30}" ;;
        stop)
            # All at once: a node stopped last alone has no quorum and would hang in controlled shutdown.
            for ((n = 1; n <= C_NODES; n++)); do cluster_node "$n"; stop_node "${TIMEOUT:-30}" & done
            wait ;;
        status)
            local down=0
            for ((n = 1; n <= C_NODES; n++)); do
                cluster_node "$n"
                if [[ -n "$(node_pid)" ]]; then echo "node $n running pid $(node_pid) on 127.0.0.1:$PORT"
                else echo "node $n stopped (127.0.0.1:$PORT)"; down=1; fi
            done
            return "$down" ;;
        *) echo "run-kafka: unknown cluster command $SUB" >&2; usage ;;
    esac
}

case "$CMD" in
    cluster)
        cluster_cmd ;;
    resolve)
        resolve
        echo "$LIB" ;;
    version)
        kafka_version ;;
    start)
        prepare
        launch_daemon
        wait_ready "$(cat "$PIDFILE")"
        echo "127.0.0.1:$PORT" ;;
    foreground)
        prepare
        echo $$ >"$PIDFILE"
        echo "run-kafka: Kafka $(kafka_version) on 127.0.0.1:$PORT (controller $CPORT), dir $DIR" >&2
        exec "${JAVA_CMD[@]}" ;;
    stop)
        stop_node "${TIMEOUT:-30}" ;;
    status)
        pid="$(node_pid)"
        if [[ -n "$pid" ]]; then echo "running pid $pid on 127.0.0.1:$PORT"; else echo "stopped"; exit 1; fi ;;
    -h|--help|help)
        usage ;;
    *)
        echo "run-kafka: unknown command $CMD" >&2; usage ;;
esac
