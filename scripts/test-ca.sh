#!/usr/bin/env bash
# A throwaway certificate authority for tests that speak TLS on loopback (PostgreSQL, brokers):
#   scripts/test-ca.sh DIR [CLIENT [MORE...]]
#       writes DIR/ca.pem, DIR/ca.key, a server certificate for 127.0.0.1 and localhost signed by
#       it (DIR/server.pem, DIR/server.key), and a client certificate whose subject CN is CLIENT
#       (default gw-1; DIR/client.pem, DIR/client.key), as IoT Hub's X.509 devices have; each
#       further name gets one too (DIR/client-NAME.pem, DIR/client-NAME.key)
# openssl from Debian; installed when missing and root. The keys are test keys: never deploy them.
set -euo pipefail
dir=${1:?directory}
if ! command -v openssl >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test-ca.sh: openssl is not installed (apt-get install openssl)" >&2
        exit 1
    fi
    (apt-get install -y -q openssl || (apt-get update -q && apt-get install -y -q openssl)) >/dev/null
fi
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=sandstep test CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
# client NAME FILE: a client certificate for NAME in FILE.pem, its key in FILE.key.
client() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$1" -keyout "$2.key" -out "$2.csr" 2>/dev/null
    openssl x509 -req -in "$2.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile client.ext -out "$2.pem" 2>/dev/null
    rm -f "$2.csr"
    chmod 0600 "$2.key"
}
client "${2:-gw-1}" client
for more in "${@:3}"; do
    client "$more" "client-$more"
done
rm -f server.csr server.ext client.ext ca.srl
chmod 0600 ca.key server.key
