# Walkthrough 1: ADU's ordered multi-step update with reference steps (the contoso virtual
# vacuum's update 5.0, as CreateSampleMSOEUpdate-5.x.ps1 writes it), converted and deployed.
. examples/walkthroughs/setup.sh adu-multi-step
start_replica

# The update as ADU's tooling wrote it: import manifests, ADU's scripts and data files.
u=$w/files && adu=tests/adu/contoso
cp $adu/import/*.importmanifest.json $adu/scripts/*.sh $adu/data-files/*.json "$u/"
$s manifest from-import "$u/Contoso.Virtual-Vacuum.5.0.importmanifest.json"

# The gateway: the vacuum's components (ADU's demo devices, their paths moved into $w), and
# what it is, for the parent update's compatibility.
g=$w/vacuum-1 && mkdir -p "$g"
cp -r $adu/demo-devices/contoso-devices "$g/"
sed "s|\\\\/usr\\\\/local|$g|g" "$g/contoso-devices/components-inventory.json" >"$g/inventory.json"
cat >"$g/agent.toml" <<TOML
[agent]
device-id = "vacuum-1"
inventory = "$g/inventory.json"
[mqtt]
url = "$broker"
[device]
properties = { manufacturer = "contoso", model = "virtual-vacuum-v1" }
TOML
install_gateway "$g"
$s agent --config "$g/agent.toml" --data-dir "$g/data" 2>"$g/agent.log" &

$f deploy --config "$w/fleet.toml" --device vacuum-1 --manifest "$u/Contoso.Virtual-Vacuum.5.0.manifest.json" \
    --files-url "$files_url" $keys
$f status --config "$w/fleet.toml" --device vacuum-1 --wait
# Each motor and camera has its new firmware; no component is a steamer (604).
for c in motors/contoso-motor-serial-0000{0,1,2}; do cmp $adu/data-files/motor-firmware-1.2.json "$g/contoso-devices/vacuum-1/$c/firmware.json"; done
for c in cameras/contoso-camera-serial-0000{0,1}; do cmp $adu/data-files/camera-firmware-2.1.json "$g/contoso-devices/vacuum-1/$c/firmware.json"; done
$f status --config "$w/fleet.toml" --device vacuum-1 --json |
    jq -e '."vacuum-1".state.reported.lastInstallResult.stepResults.step_2.resultCode == 604'
