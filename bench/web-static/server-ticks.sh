# Sourced by bench/web-static/run and bench/proxy/run.
# SPDX-License-Identifier: Apache-2.0

# server_ticks KEY: CPU time (user + system, in clock ticks) used so far by the processes listed
# for KEY in the caller's SERVER_PIDS_OF (comma-separated PIDs; nginx: master and workers;
# servente: its one process, every thread). Divided by the requests of a run, it is the CPU each
# request cost that server: steadier than req/s on a machine whose speed varies, and blind to how
# the load generator (and an upstream) shared the cores.
server_ticks() {
    local pid sum=0
    for pid in ${SERVER_PIDS_OF[$1]//,/ }; do
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}
