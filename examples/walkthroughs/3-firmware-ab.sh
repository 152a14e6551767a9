# Walkthrough 3: firmware A/B with stages, through a reboot. The slots are files and the boot
# loader is played by the reboot command below (scripts/boot-test.sh boots a real one).
. examples/walkthroughs/setup.sh firmware
start_replica

g=$w/gw-fw && mkdir -p "$g"
echo 'factory image 1.0' >"$g/a.img"                       # slot A runs
printf 'booted_slot=a\nboot_slot=a\n' >"$g/bootenv"        # the boot loader's environment
echo boot-1 >"$g/boot_id" && echo 'console=ttyS0' >"$g/cmdline"
cat >"$g/reboot" <<'SH'
#!/bin/sh
# The boot loader, played: the next boot runs the slot sandstep selected, with a new boot id.
sed -i "s/^booted_slot=.*/booted_slot=$(sed -n 's/^boot_slot=//p' "$1/bootenv")/" "$1/bootenv"
cat /proc/sys/kernel/random/uuid >"$1/boot_id"
SH
chmod +x "$g/reboot"
cat >"$g/agent.toml" <<TOML
[agent]
device-id = "gw-fw"
reboot-command = ["$g/reboot", "$g"]
[mqtt]
url = "$broker"
[device]
properties = { model = "gw" }
[handlers."sandstep/firmware:1"]
capabilities = ["slot"]
[handlers."sandstep/firmware:1".slot]
a = "$g/a.img"
b = "$g/b.img"
boot = { method = "env-file", path = "$g/bootenv" }
boot-id-file = "$g/boot_id"
cmdline-file = "$g/cmdline"
TOML
install_gateway "$g"
$s doctor --config "$g/agent.toml" --data-dir "$g/data" | grep 'slot'   # the slots and the boot control
$s agent --config "$g/agent.toml" --data-dir "$g/data" 2>"$g/agent.log" &
agent=$!

head -c 5000000 /dev/urandom >"$w/files/fw-2.0.img"
$s manifest new --update-id contoso/gateway-fw/2.0 --compat model=gw \
    --step '{"handler": "sandstep/firmware:1", "files": ["fw-2.0.img"], "handlerProperties": {"installedCriteria": "2.0"}}' \
    --files-dir "$w/files" --out "$w/fw-2.0.json"
$f deploy --config "$w/fleet.toml" --device gw-fw --manifest "$w/fw-2.0.json" --files-url "$files_url" $keys
wait "$agent" || echo "the agent stopped for the reboot (exit status $?)"
$f status --config "$w/fleet.toml" --device gw-fw              # rebooting
$s agent --config "$g/agent.toml" --data-dir "$g/data" 2>>"$g/agent.log" &   # slot B booted
$f status --config "$w/fleet.toml" --device gw-fw --wait       # committed: completed
cmp "$w/files/fw-2.0.img" "$g/b.img" && grep -x 'upgrade_available=0' "$g/bootenv"
