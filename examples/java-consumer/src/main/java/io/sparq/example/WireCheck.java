package io.sparq.example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.networknt.schema.JsonSchema;
import com.networknt.schema.JsonSchemaFactory;
import com.networknt.schema.SpecVersion;
import com.networknt.schema.ValidationMessage;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessageUnpacker;
import org.msgpack.value.Value;

/**
 * Reads every topic of a sparq-stream run from the beginning and validates each record against the
 * JSON Schema its envelope names (docs/wire.md). Dead letters are validated as their header map.
 * Usage: WireCheck BOOTSTRAP PREFIX SCHEMAS_DIR. Prints "count SCHEMA N" per valid record's schema
 * and each invalid record; exits 1 on any invalid record that the services did not dead-letter.
 */
public final class WireCheck {
  /** The schema of a dead letter's headers (docs/wire.md, "Dead letters"). */
  static final String DLQ_HEADERS_FILE = "sparq.dead_letter.headers.v2.json";
  static final List<String> TOPICS = List.of(
      "seeds", "candidates", "novel", "drops", "solved", "elites", "archive", "models", "metrics", "dlq", "mutator-state");
  static final JsonNodeFactory JSON = JsonNodeFactory.instance;

  public static void main(String[] args) throws Exception {
    String bootstrap = args[0], prefix = args[1];
    Path schemas = Path.of(args[2]);
    JsonSchemaFactory factory = JsonSchemaFactory.getInstance(SpecVersion.VersionFlag.V202012);
    Map<String, JsonSchema> cache = new HashMap<>();
    Map<String, Integer> counts = new TreeMap<>();
    Map<String, String> invalid = new TreeMap<>();  // "topic[partition]@offset" -> why
    Set<String> deadLettered = new HashSet<>();  // what the services already rejected (dlq headers)

    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("isolation.level", "read_committed");
    props.put("enable.auto.commit", "false");
    try (KafkaConsumer<byte[], byte[]> consumer =
        new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
      List<TopicPartition> parts = new ArrayList<>();
      for (String name : TOPICS) {
        for (PartitionInfo p : consumer.partitionsFor(prefix + "." + name, Duration.ofSeconds(30))) {
          parts.add(new TopicPartition(p.topic(), p.partition()));
        }
      }
      consumer.assign(parts);
      consumer.seekToBeginning(parts);
      Map<TopicPartition, Long> end = consumer.endOffsets(parts);
      long deadline = System.currentTimeMillis() + 120_000;
      while (parts.stream().anyMatch(tp -> consumer.position(tp) < end.get(tp))) {
        if (System.currentTimeMillis() > deadline) throw new IllegalStateException("did not reach the end offsets");
        for (ConsumerRecord<byte[], byte[]> rec : consumer.poll(Duration.ofMillis(500))) {
          String schemaName;
          JsonNode node;
          String file = null;  // the schema file: the dlq headers' own, else named by the record's schema and version
          if (rec.topic().equals(prefix + ".dlq")) {  // a dead letter: original bytes + UTF-8 headers
            schemaName = "sparq.dead_letter.headers";
            file = DLQ_HEADERS_FILE;
            ObjectNode headers = JSON.objectNode();
            for (Header h : rec.headers()) {
              headers.put(h.key(), h.value() == null ? "" : new String(h.value(), StandardCharsets.UTF_8));
            }
            node = headers;
            deadLettered.add(headers.path("sparq.dlq.source_topic").asText() + "[" + headers.path("sparq.dlq.partition").asText()
                + "]@" + headers.path("sparq.dlq.offset").asText());
          } else if (rec.value() == null) {  // a tombstone (compacted topics)
            counts.merge("(tombstone)", 1, Integer::sum);
            continue;
          } else {
            try (MessageUnpacker in = MessagePack.newDefaultUnpacker(rec.value())) {
              node = toJson(in.unpackValue());
              if (in.hasNext()) throw new IllegalArgumentException("trailing bytes after the map");
            } catch (Exception e) {
              invalid.put(where(rec), "not msgpack: " + e.getMessage());
              continue;
            }
            JsonNode s = node.get("schema");
            schemaName = s == null ? "(no schema)" : s.asText();
          }
          if (file == null) {
            JsonNode version = node.get("version");
            if (version == null || !version.isIntegralNumber()) {  // a record without its version names no contract
              invalid.put(where(rec), schemaName + ": missing or non-integer version");
              continue;
            }
            file = schemaName + ".v" + version.asText() + ".json";
          }
          if (!Files.isRegularFile(schemas.resolve(file))) {
            invalid.put(where(rec), "no schema file " + file);
            continue;
          }
          JsonSchema schema = cache.computeIfAbsent(file, f -> load(factory, schemas.resolve(f)));
          Set<ValidationMessage> errors = schema.validate(node);
          if (!errors.isEmpty()) {
            invalid.put(where(rec), schemaName + ": " + errors);
            continue;
          }
          counts.merge(schemaName.equals("sparq.dead_letter.headers") ? "sparq.dead_letter" : schemaName, 1, Integer::sum);
        }
      }
    }
    int bad = 0;
    for (Map.Entry<String, String> e : invalid.entrySet()) {
      boolean known = deadLettered.contains(e.getKey());  // a poison record the services dead-lettered
      System.out.println((known ? "dead-lettered " : "INVALID ") + e.getKey() + ": " + e.getValue());
      if (!known) bad++;
    }
    counts.forEach((name, n) -> System.out.println("count " + name + " " + n));
    System.out.println("invalid " + bad);
    System.exit(bad == 0 ? 0 : 1);
  }

  static String where(ConsumerRecord<byte[], byte[]> rec) {
    return rec.topic() + "[" + rec.partition() + "]@" + rec.offset();
  }

  static JsonSchema load(JsonSchemaFactory factory, Path path) {
    try (InputStream in = Files.newInputStream(path)) {
      return factory.getSchema(in);
    } catch (Exception e) {
      throw new IllegalStateException("cannot load " + path, e);
    }
  }

  /** msgpack -> JSON: maps, arrays, strings, numbers, booleans, nil; binary becomes padded base64 text. */
  static JsonNode toJson(Value v) {
    switch (v.getValueType()) {
      case NIL: return JSON.nullNode();
      case BOOLEAN: return JSON.booleanNode(v.asBooleanValue().getBoolean());
      case INTEGER: return v.asIntegerValue().isInLongRange()
          ? JSON.numberNode(v.asIntegerValue().toLong()) : JSON.numberNode(v.asIntegerValue().toBigInteger());
      case FLOAT: return JSON.numberNode(v.asFloatValue().toDouble());
      case STRING: return JSON.textNode(v.asStringValue().asString());
      case BINARY: return JSON.textNode(Base64.getEncoder().encodeToString(v.asBinaryValue().asByteArray()));
      case ARRAY: {
        ArrayNode out = JSON.arrayNode();
        for (Value item : v.asArrayValue()) out.add(toJson(item));
        return out;
      }
      case MAP: {
        ObjectNode out = JSON.objectNode();
        for (Map.Entry<Value, Value> e : v.asMapValue().entrySet()) out.set(e.getKey().toString(), toJson(e.getValue()));
        return out;
      }
      default: throw new IllegalArgumentException("unsupported msgpack type " + v.getValueType());
    }
  }
}
