"""Kafka logins from a Java client properties file, as kafka-python options.

A secured cluster hands each principal one file in the Java client's format (what
``deploy/kafka/run-kafka.sh --auth scram`` writes to ``DIR/clients/<principal>.properties``)::

    security.protocol=SASL_PLAINTEXT
    sasl.mechanism=SCRAM-SHA-512
    sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="solver" password="...";

:func:`client_security_options` turns such a file into the options every kafka-python client
takes (``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``,
``sasl_plain_password``, ``ssl_cafile``, ...). Settings name the file
(``--kafka-client-config FILE`` or ``SPARQ_KAFKA_CLIENT_CONFIG``), so a password is never on a
command line. A bad or unsupported entry raises :class:`ConfigError` naming the file and the key
(never a value); keys that are not about security (``client.id``, ``acks``, ...) are ignored.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sparq_stream.errors import ConfigError

__all__ = [
    "PRINCIPALS",
    "SERVICE_PRINCIPALS",
    "client_security_options",
    "login_hint",
    "parse_jaas_config",
    "principal_file",
    "read_properties",
]

log = logging.getLogger(__name__)

#: The principals of a secured cluster (``run-kafka.sh --auth scram`` creates each one).
PRINCIPALS: tuple[str, ...] = ("admin", "mutator", "novelty", "solver", "archivist", "trainer", "reader")
#: The principals the loop's services log in as: one per service.
SERVICE_PRINCIPALS: tuple[str, ...] = ("mutator", "novelty", "solver", "archivist", "trainer")

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms kafka-python can use with a user name and password, and the login module each needs.
_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
_JAAS_FLAGS = ("required", "requisite", "sufficient", "optional")
#: Security keys read from the file; any other ``sasl.*`` or ``ssl.*`` key is refused (it would be ignored silently).
_KNOWN = {
    "security.protocol",
    "sasl.mechanism",
    "sasl.jaas.config",
    "ssl.truststore.location",
    "ssl.truststore.type",
    "ssl.endpoint.identification.algorithm",
    "ssl.keystore.location",
    "ssl.keystore.type",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.truststore.password",
}


def principal_file(auth_dir: str | Path, principal: str) -> Path:
    """The client properties file of ``principal`` in a folder of them (``DIR/clients``); missing raises ConfigError."""
    path = Path(auth_dir) / f"{principal}.properties"
    if not path.is_file():
        raise ConfigError(f"Kafka auth dir {auth_dir}: no {path.name} (expected one properties file per principal: "
                          f"{', '.join(PRINCIPALS)})")  # fmt: skip
    return path


# ---------------------------------------------------------------------- Java properties
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _logical_lines(text: str) -> list[str]:
    """Join continuation lines (an odd number of trailing backslashes); drop blanks and comments."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _unescape(text: str) -> str:
    """Java properties escapes: ``\\t \\n \\r \\f \\uXXXX``; any other ``\\c`` is ``c``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


def _split_entry(line: str) -> tuple[str, str]:
    """Split one logical line at the first unescaped ``=``, ``:`` or white space."""
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(key), _unescape(rest)


def read_properties(path: str | Path) -> dict[str, str]:
    """Read a Java ``.properties`` file (comments, continuations, escapes); a missing file raises ConfigError."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Kafka client config {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Kafka client config {file}: cannot read it ({type(exc).__name__})") from None
    return dict(_split_entry(line) for line in _logical_lines(text))


# ---------------------------------------------------------------------- JAAS
_JAAS_OPTION = re.compile(r'\s*([A-Za-z0-9_.\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;"]+)')


def parse_jaas_config(value: str, where: str = "sasl.jaas.config") -> tuple[str, dict[str, str]]:
    """Parse ``<LoginModule> required key="value" ...;`` into the module name and its options (ConfigError naming ``where``)."""
    text = value.strip()
    if not text.endswith(";"):
        raise ConfigError(f"{where}: must end with ';' (<LoginModule> required username=\"...\" password=\"...\";)")
    head = re.match(r"\s*([A-Za-z0-9_.$]+)\s+([A-Za-z]+)", text)
    if head is None or head.group(2).lower() not in _JAAS_FLAGS:
        raise ConfigError(f"{where}: expected '<LoginModule> required key=\"value\" ...;'")
    options: dict[str, str] = {}
    pos = head.end()
    body = text[:-1]
    while pos < len(body):
        if not body[pos:].strip():
            break
        found = _JAAS_OPTION.match(body, pos)
        if found is None:  # name the last key read, never a value
            after = f"after option {list(options)[-1]!r}" if options else "after the login module's flag"
            raise ConfigError(f"{where}: cannot read the options {after}: expected key=\"value\" pairs "
                              "(a '\"' inside a quoted value is written \\\\\\\" in a properties file)")  # fmt: skip
        raw = found.group(2)
        options[found.group(1)] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = found.end()
    return head.group(1), options


# ---------------------------------------------------------------------- to kafka-python
def client_security_options(path: str | Path) -> dict[str, Any]:
    """The kafka-python security options of a Java client properties file (see the module's doc)."""
    file = Path(path)
    props = read_properties(file)
    where = f"Kafka client config {file}"
    unknown = sorted(k for k in props if k.startswith(("sasl.", "ssl.")) and k not in _KNOWN)
    if unknown:
        raise ConfigError(f"{where}: unsupported key(s) {', '.join(unknown)}; sparq reads "
                          f"{', '.join(sorted(_KNOWN))}")  # fmt: skip
    ignored = sorted(k for k in props if k not in _KNOWN)
    if ignored:
        log.debug("%s: keys not about security ignored: %s", where, ", ".join(ignored))
    protocol = props.get("security.protocol", "PLAINTEXT").strip().upper()
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"{where}: security.protocol must be one of {', '.join(_PROTOCOLS)}")
    opts: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        opts.update(_sasl_options(props, where))
    elif "sasl.mechanism" in props or "sasl.jaas.config" in props:
        raise ConfigError(f"{where}: sasl.* keys need security.protocol SASL_PLAINTEXT or SASL_SSL (got {protocol})")
    if protocol.endswith("SSL"):
        opts.update(_ssl_options(props, where, file.parent))
    return opts


def _sasl_options(props: dict[str, str], where: str) -> dict[str, Any]:
    mechanism = props.get("sasl.mechanism", "").strip().upper()
    if not mechanism:
        raise ConfigError(f"{where}: sasl.mechanism is missing (one of {', '.join(_LOGIN_MODULES)})")
    if mechanism not in _LOGIN_MODULES:
        raise ConfigError(f"{where}: sasl.mechanism {mechanism} is not supported; allowed: {', '.join(_LOGIN_MODULES)}")
    jaas = props.get("sasl.jaas.config")
    if not jaas:
        raise ConfigError(f"{where}: sasl.jaas.config is missing (the login: username and password)")
    module, options = parse_jaas_config(jaas, f"{where}: sasl.jaas.config")
    if module != _LOGIN_MODULES[mechanism]:
        raise ConfigError(f"{where}: sasl.jaas.config uses {module}; sasl.mechanism {mechanism} needs {_LOGIN_MODULES[mechanism]}")
    missing = [k for k in ("username", "password") if not options.get(k)]
    if missing:
        raise ConfigError(f"{where}: sasl.jaas.config has no {' and no '.join(missing)}")
    return {"sasl_mechanism": mechanism, "sasl_plain_username": options["username"], "sasl_plain_password": options["password"]}


def _ssl_options(props: dict[str, str], where: str, base: Path) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    store = props.get("ssl.truststore.location")
    if store:
        kind = props.get("ssl.truststore.type", "JKS").strip().upper()
        if kind != "PEM":
            raise ConfigError(f"{where}: ssl.truststore.type {kind}: kafka-python reads PEM trust stores only "
                              "(ssl.truststore.type=PEM, the CA certificate as PEM)")  # fmt: skip
        cafile = Path(store) if Path(store).is_absolute() else base / store
        if not cafile.is_file():
            raise ConfigError(f"{where}: ssl.truststore.location {cafile} does not exist")
        opts["ssl_cafile"] = str(cafile)
    if props.get("ssl.keystore.location"):
        raise ConfigError(f"{where}: ssl.keystore.location (client certificates) is not supported; log in with SASL")
    if "ssl.endpoint.identification.algorithm" in props:
        opts["ssl_check_hostname"] = props["ssl.endpoint.identification.algorithm"].strip().lower() == "https"
    return opts


def login_hint(options: dict[str, Any]) -> str:
    """Words to add to 'no broker answered' when the client logs in: a refused login looks the same to kafka-python."""
    user = options.get("sasl_plain_username")
    if not user:
        return ""
    return f", or it refused the {options.get('sasl_mechanism', 'SASL')} login of user {user!r} (check its client config)"
