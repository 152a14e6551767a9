# Walkthrough 4: Degu file sets (URL + MD5 per file), only what differs replaced, a failed set
# put back whole.
. examples/walkthroughs/setup.sh degu
start_replica

# The device's app directory (writable for the files handler) and a read-only one.
g=$w/degu-1 && mkdir -p "$g/app" "$g/etc"
echo "print('v1')" >"$g/app/main.py" && echo 'interval=60' >"$g/app/CONFIG"
cat >"$g/agent.toml" <<TOML
[agent]
device-id = "degu-1"
[mqtt]
url = "$broker"
[device]
properties = { model = "degu" }
[handlers."sandstep/files:1"]
dirs = [{ host = "$g/app", guest = "/dest/app", writable = true },
        { host = "$g/etc", guest = "/dest/etc" }]
TOML
install_gateway "$g"
$s agent --config "$g/agent.toml" --data-dir "$g/data" 2>"$g/agent.log" &

# Set 2.0: main.py changes, CONFIG is the same. One step per file, with its MD5.
md5() { md5sum "$1" | cut -d' ' -f1; }
step() { echo "{\"handler\": \"sandstep/files:1\", \"files\": [\"$1\"], \"handlerProperties\": {\"destination\": \"$2\", \"installedCriteria\": \"md5:$(md5 "$3/$1")\"}}"; }
set2=$w/files/set-2.0 && mkdir -p "$set2"
echo "print('v2')" >"$set2/main.py" && echo 'interval=60' >"$set2/CONFIG"
$s manifest new --update-id degu/app/2.0 --compat model=degu --files-dir "$set2" --out "$w/set-2.0.json" \
    --step "$(step main.py /dest/app/main.py "$set2")" --step "$(step CONFIG /dest/app/CONFIG "$set2")"
$f deploy --config "$w/fleet.toml" --device degu-1 --manifest "$w/set-2.0.json" --files-url "${files_url}set-2.0/" $keys
$f status --config "$w/fleet.toml" --device degu-1 --wait
cmp "$set2/main.py" "$g/app/main.py"
grep -q 'GET /set-2.0/CONFIG' "$w/http.log" && exit 1   # in place already: not even downloaded

# Set 3.0: main.py and a new lib.py, then a file the device's policy lets nobody write: the set
# fails at its last step and is put back whole.
set3=$w/files/set-3.0 && mkdir -p "$set3"
echo "print('v3')" >"$set3/main.py" && echo 'def f(): pass' >"$set3/lib.py" && echo 'x=1' >"$set3/sys.conf"
$s manifest new --update-id degu/app/3.0 --compat model=degu --files-dir "$set3" --out "$w/set-3.0.json" \
    --step "$(step main.py /dest/app/main.py "$set3")" --step "$(step lib.py /dest/app/lib.py "$set3")" \
    --step "$(step sys.conf /dest/etc/sys.conf "$set3")"
$f deploy --config "$w/fleet.toml" --device degu-1 --manifest "$w/set-3.0.json" --files-url "${files_url}set-3.0/" $keys
$f status --config "$w/fleet.toml" --device degu-1 --wait || echo "set 3.0 failed (exit status $?)"
cmp "$set2/main.py" "$g/app/main.py" && test ! -e "$g/app/lib.py"    # as before set 3.0
$f status --config "$w/fleet.toml" --device degu-1     # the failure, and the steps undone
$f status --config "$w/fleet.toml" --device degu-1 --json |     # what was put back
    jq -e '."degu-1".state.reported.lastInstallResult.stepResults |
           .step_2.restore.resultDetails and .step_0.undoneBy == "step_2"'
