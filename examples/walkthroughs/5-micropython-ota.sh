# Walkthrough 5: micropython-ota, HTTP polling (no broker): a version tag on a file server, a
# signed deployment per tag; a rollback is its own signed tag.
. examples/walkthroughs/setup.sh micropython-ota
p=$w/files/proj && mkdir -p "$p"

g=$w/mpy-1 && mkdir -p "$g/app"
cat >"$g/agent.toml" <<TOML
[agent]
device-id = "mpy-1"
source = "http-poll"
[http-poll]
base-url = "$files_url"
project = "proj"
interval-secs = 2
[device]
properties = { model = "mpy" }
[handlers."sandstep/files:1"]
fetch-after-is-installed = true
dirs = [{ host = "$g/app", guest = "/app", writable = true }]
TOML
install_gateway "$g"

# tag TAG VERSION [--allow-downgrade]: main.py of update contoso/app/VERSION, signed, served.
tag() {
    mkdir -p "$p/$1" && echo "print('$2')" >"$p/$1/main.py"
    $s manifest new --update-id "contoso/app/$2" --compat model=mpy "${@:3}" \
        --step '{"handler": "sandstep/files:1", "files": ["main.py"], "handlerProperties": {"destination": "/app/main.py"}}' \
        --files-dir "$p/$1" --out "$p/$1/manifest.json"
    $s manifest sign "$p/$1/manifest.json" --key "$w/signing" --root-key "$w/root" \
        --files-url "${files_url}proj/$1/" --out "$p/$1/deployment.json"
}
tag v1 1.0 && tag v2 2.0
echo v1 >"$p/version"
$s agent --config "$g/agent.toml" --data-dir "$g/data" 2>"$g/agent.log" &
wait_for "v1 installed" cmp "$p/v1/main.py" "$g/app/main.py"
echo v2 >"$p/version"
wait_for "v2 installed" cmp "$p/v2/main.py" "$g/app/main.py"

# Back to v1 as it is: a downgrade, refused once and not retried; status says why.
echo v1 >"$p/version"
wait_for "the refusal" sh -c "$s status --config $g/agent.toml --data-dir $g/data | grep 'refused for what it says'"
$s status --config "$g/agent.toml" --data-dir "$g/data"

# The rollback: its own tag, signed with --allow-downgrade.
tag v1-rollback 1.0 --allow-downgrade
echo v1-rollback >"$p/version"
wait_for "the rollback installed" cmp "$p/v1-rollback/main.py" "$g/app/main.py"
$s status --config "$g/agent.toml" --data-dir "$g/data"
