#!/bin/sh
# Demo pre-install step (microsoft/script:1, ADU's script protocol): checks there is room for
# the update and says so. It runs on every deployment (is-installed always answers 901).
action="" result=""
while [ $# -gt 0 ]; do
    case "$1" in
        --action-*) action="${1#--action-}" ;;
        --result-file) result="$2"; shift ;;
    esac
    shift
done
reply() { printf '{"resultCode": %d, "extendedResultCode": 0, "resultDetails": "%s"}\n' "$1" "$2" > "$result"; }
case "$action" in
    is-installed) reply 901 "pre-install checks run every time" ;;
    download) reply 500 "" ;;
    install)
        free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
        if [ "${free_kb:-0}" -lt 1024 ]; then reply 0 "less than 1 MiB free"; exit 0; fi
        reply 600 "${free_kb} KiB free" ;;
    apply) reply 700 "pre-install checks passed" ;;
    cancel) reply 800 "" ;;
    *) echo "unknown action $action" >&2; exit 2 ;;
esac
