#!/usr/bin/env bash
# A throwaway PostgreSQL from Debian's packages, for the fleet tests and benchmarks:
#   scripts/postgres.sh start DIR [--tls CERTS [--client-certs]]
#                                   initdb in DIR/data, start on a free loopback port, print the
#                                   URL; with --tls, serve TLS with CERTS/server.pem and server.key
#                                   (scripts/test-ca.sh makes them); with --client-certs, TCP
#                                   clients must present a certificate signed by CERTS/ca.pem whose
#                                   CN is the user (`cert` authentication; the user is sandstep)
#   scripts/postgres.sh stop DIR    stop it (DIR can then be removed)
# PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged user
# ($SANDSTEP_PG_USER, default nobody). Trust authentication, loopback only; nothing persists
# beyond DIR. Installs the `postgresql` package when missing and root.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2
        exit 1
    fi
    (apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)) >/dev/null
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
run=()
if [[ $(id -u) -eq 0 ]]; then
    run=(runuser -u "${SANDSTEP_PG_USER:-nobody}" --)
fi
case $cmd in
start)
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown "${SANDSTEP_PG_USER:-nobody}" "$dir"
    "${run[@]}" "$bin/initdb" -D "$dir/data" -U sandstep --auth=trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    tls=()
    if [[ ${3:-} == --tls ]]; then
        certs=${4:?--tls needs the directory scripts/test-ca.sh wrote}
        cp "$certs/server.pem" "$certs/server.key" "$dir/"
        [[ $(id -u) -eq 0 ]] && chown "${SANDSTEP_PG_USER:-nobody}" "$dir/server.pem" "$dir/server.key"
        chmod 0600 "$dir/server.key"
        tls=(-c ssl=on -c "ssl_cert_file=$dir/server.pem" -c "ssl_key_file=$dir/server.key")
        if [[ ${5:-} == --client-certs ]]; then
            cp "$certs/ca.pem" "$dir/"
            printf 'local all all trust\nhostssl all all 127.0.0.1/32 cert\n' > "$dir/pg_hba.conf"
            [[ $(id -u) -eq 0 ]] && chown "${SANDSTEP_PG_USER:-nobody}" "$dir/ca.pem" "$dir/pg_hba.conf"
            tls+=(-c "ssl_ca_file=$dir/ca.pem" -c "hba_file=$dir/pg_hba.conf")
        fi
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=100 ${tls[*]}" \
        start >/dev/null || { cat "$dir/postgres.log" >&2; exit 1; }
    echo "postgres://sandstep@127.0.0.1:$port/postgres"
    ;;
stop)
    [[ -d $dir/data ]] && "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
*)
    echo "postgres.sh: start|stop DIR" >&2
    exit 2
    ;;
esac
