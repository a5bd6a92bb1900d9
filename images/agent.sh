# Console agent of the smm-hotplug-harness guest (run by /init with busybox sh,
# stdin/stdout/stderr on /dev/ttyS0). Not an interactive shell: no prompt, no
# line editing, no terminal queries.
#
# Wire protocol (one request per line, client -> agent):
#     <token> <base64 of the command>\n
# <token> is [A-Za-z0-9]{1,64}, chosen fresh by the client for every request.
# Answer (agent -> client):
#     @@<token> BEGIN@@\n<output, stdout and stderr merged>\n@@<token> RC=<n>@@\n
# The "\n" before the end marker is always added by the agent, so the exact output
# is what lies between the two markers minus that one newline. The tty is raw (no
# echo, no \n -> \r\n), so the bytes are the command's bytes. The command runs in
# a subshell (`exit 3` is its status, not the agent's) with stdin from /dev/null.
# Lines that do not parse are ignored.
stty raw -echo 2>/dev/null
CR=$(printf '\r')
echo "@@SMM-AGENT READY $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)@@"
while :; do
    if ! IFS= read -r line; then
        sleep 1
        continue
    fi
    line=${line%"$CR"}
    tok=${line%% *}
    b64=${line#* }
    case "$tok" in
        "" | *[!A-Za-z0-9]*) continue ;;
    esac
    [ "$b64" != "$line" ] || continue
    cmd=$(printf '%s' "$b64" | base64 -d 2>/dev/null) || {
        printf '@@%s BEGIN@@\nagent: bad base64\n@@%s RC=%d@@\n' "$tok" "$tok" 254
        continue
    }
    printf '@@%s BEGIN@@\n' "$tok"
    (eval "$cmd") </dev/null 2>&1
    rc=$?
    printf '\n@@%s RC=%d@@\n' "$tok" "$rc"
done
