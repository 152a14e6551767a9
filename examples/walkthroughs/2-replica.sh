# Walkthrough 2: the software-update pattern, a device-state replica between fleet and gateway.
. examples/walkthroughs/setup.sh replica
start_replica

# The gateway: a device id, what it is (for the manifests' compatibility), and the directory the
# files handler may write into.
g=$w/gw-2 && mkdir -p "$g/app"
cat >"$g/agent.toml" <<TOML
[agent]
device-id = "gw-2"
[mqtt]
url = "$broker"
[device]
properties = { model = "gw" }
[handlers."sandstep/files:1"]
dirs = [{ host = "$g/app", guest = "/dest/app", writable = true }]
TOML
install_gateway "$g"
$s agent --config "$g/agent.toml" --data-dir "$g/data" 2>"$g/agent.log" &

# An update: one file placed into the app directory; deploy succeeds once the replica stored it.
echo 'greeting = "hello"' >"$w/files/app.conf"
$s manifest new --update-id contoso/app/1.0 --compat model=gw --files-dir "$w/files" \
    --step '{"handler": "sandstep/files:1", "files": ["app.conf"], "handlerProperties": {"destination": "/dest/app/app.conf"}}' \
    --out "$w/app-1.0.json"
$f deploy --config "$w/fleet.toml" --device gw-2 --manifest "$w/app-1.0.json" --files-url "$files_url" $keys
$f status --config "$w/fleet.toml" --device gw-2 --wait    # until it ends; exit 1 when it failed
cmp "$w/files/app.conf" "$g/app/app.conf"

# Desired state in the pattern's own shape is refused, and the refusal is reported.
mosquitto_pub -L "$broker/state/gw-2/update" -m '{"state": {"desired": {"softwareURL": "http://127.0.0.1:1/fw.bin"}}}'
wait_for "the refusal" sh -c "$s status --config $g/agent.toml --data-dir $g/data | grep 'not applied: softwareURL'"
$f status --config "$w/fleet.toml" --device gw-2

# The web console beside the replica, over its store: an account, then the console itself (a
# self-signed certificate is made for it; a browser shows the same pages at $console).
echo 'walkthrough password' | $f console add-user ops --role operator --config "$w/fleet.toml" --data-dir "$w/replica"
printf '[console]\nlisten = "127.0.0.1:%s"\n' "${CONSOLE_PORT:-8443}" >>"$w/fleet.toml"
$f console --config "$w/fleet.toml" --data-dir "$w/replica" >"$w/console.log" 2>&1 &
wait_for "the console" grep -q 'console at' "$w/console.log"
console=https://127.0.0.1:${CONSOLE_PORT:-8443}
curl -sk -c "$w/cookies" --data-urlencode user=ops --data-urlencode 'password=walkthrough password' "$console/login" >/dev/null
curl -sk -b "$w/cookies" "$console/devices?q=gw-2" | grep -A2 '>gw-2<' | grep completed
