#!/bin/sh
# The entrypoint of every tickvault container in docker-compose.yml (db, migrate, ingest, api,
# jupyter): refuses to start while a database password is still .env.example's placeholder,
# or while the owner's and the app's passwords are one and the same, then runs the container's
# own command. Compose's ${VAR:?} catches only an empty or unset value. Plain POSIX sh, no
# other program: it runs in the Debian-based app image and the Alpine-based db image alike.
#
#   sh deploy/refuse-placeholders.sh COMMAND [ARG...]
set -eu

refuse() {
    echo "tickvault: $*" >&2
    exit 64
}

not_a_placeholder() {  # NAME VALUE
    case "$2" in
        change-me*)
            refuse "$1 is still the placeholder from .env.example; set it in .env to a long" \
                "random string (e.g. openssl rand -hex 32) and start again"
            ;;
    esac
}

not_a_placeholder POSTGRES_PASSWORD "${POSTGRES_PASSWORD-}"
not_a_placeholder TICKVAULT_APP_PASSWORD "${TICKVAULT_APP_PASSWORD-}"
if [ -n "${POSTGRES_PASSWORD-}" ] && [ "${POSTGRES_PASSWORD-}" = "${TICKVAULT_APP_PASSWORD-}" ]
then
    refuse "POSTGRES_PASSWORD and TICKVAULT_APP_PASSWORD are the same; the app's database" \
        "role must not know the owner's password: give each its own in .env"
fi

[ "$#" -gt 0 ] || refuse "refuse-placeholders.sh: no command to run"
exec "$@"
