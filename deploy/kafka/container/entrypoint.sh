#!/usr/bin/env bash
# The broker image's entry point: one Apache Kafka 4.x node (KRaft, combined broker+controller),
# started by run-kafka.sh (`foreground`: the JVM replaces this shell, so SIGTERM reaches it)
# with listeners a container network can use. Settings come from the environment:
#   KAFKA_NODE_ID                   this node's id (default 1)
#   KAFKA_ADVERTISED_HOST           the name clients reach this node by (default: the hostname)
#   KAFKA_CONTROLLER_QUORUM_VOTERS  id@host:9093,... (default: this node alone)
#   KAFKA_CLUSTER_ID                the same on every node of a cluster (default: a fixed id)
#   KAFKA_REPLICATION               replication of internal and default topics (default 1; a 3-node
#                                   cluster: 3, with min.insync.replicas 2)
#   KAFKA_EXTERNAL_ADDRESS          host:port clients outside the container network use (a published
#                                   port, e.g. localhost:29092): adds listener EXTERNAL on :29092
#   KAFKA_HEAP_OPTS, KAFKA_JVM_OPTS, KAFKA_LOG_LEVEL: as run-kafka.sh
# Extra broker settings: arguments `--set key=value` (repeatable). Clients: HOST:9092; the
# controller quorum: :9093 (EXPOSE'd 29092: the EXTERNAL listener). Data: /var/lib/kafka (a volume keeps the topics across restarts).
set -euo pipefail
NODE_ID="${KAFKA_NODE_ID:-1}"
HOST="${KAFKA_ADVERTISED_HOST:-$(hostname)}"
VOTERS="${KAFKA_CONTROLLER_QUORUM_VOTERS:-$NODE_ID@$HOST:9093}"
REPL="${KAFKA_REPLICATION:-1}"
MIN_ISR=$(( REPL >= 3 ? 2 : 1 ))
DIR=/var/lib/kafka
LISTENERS="PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
ADVERTISED="PLAINTEXT://$HOST:9092"
PROTOCOLS="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
if [[ -n "${KAFKA_EXTERNAL_ADDRESS:-}" ]]; then
  LISTENERS+=",EXTERNAL://0.0.0.0:29092"; ADVERTISED+=",EXTERNAL://$KAFKA_EXTERNAL_ADDRESS"; PROTOCOLS+=",EXTERNAL:PLAINTEXT"
fi
mkdir -p "$DIR"
[[ -f "$DIR/cluster.id" ]] || echo "${KAFKA_CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" >"$DIR/cluster.id"
exec /opt/kafka/run-kafka.sh foreground --port 9092 --controller-port 9093 --dir "$DIR" \
  --set "node.id=$NODE_ID" \
  --set "controller.quorum.voters=$VOTERS" \
  --set "listeners=$LISTENERS" --set "advertised.listeners=$ADVERTISED" \
  --set "listener.security.protocol.map=$PROTOCOLS" \
  --set "auto.create.topics.enable=false" \
  --set "default.replication.factor=$REPL" --set "min.insync.replicas=$MIN_ISR" \
  --set "offsets.topic.replication.factor=$REPL" \
  --set "transaction.state.log.replication.factor=$REPL" --set "transaction.state.log.min.isr=$MIN_ISR" \
  --set "share.coordinator.state.topic.replication.factor=$REPL" --set "share.coordinator.state.topic.min.isr=$MIN_ISR" \
  "$@"
