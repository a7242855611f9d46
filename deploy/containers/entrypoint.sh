#!/bin/sh
# The image's entry point: `sparq "$@"`. For `run SERVICE` with no SPARQ_CONFIG and no --config,
# the service's default settings file baked into the image is used
# (/etc/sparq/services/SERVICE.toml, a copy of services/SERVICE/settings.toml).
# exec: sparq is PID 1's only child-free process, so SIGTERM reaches it directly.
if [ "$1" = run ] && [ -n "$2" ] && [ -z "${SPARQ_CONFIG+set}" ] && [ -f "/etc/sparq/services/$2.toml" ]; then
  case " $* " in
    *" --config "*|*" --config="*) ;;
    *) export SPARQ_CONFIG="/etc/sparq/services/$2.toml" ;;
  esac
fi
exec sparq "$@"
