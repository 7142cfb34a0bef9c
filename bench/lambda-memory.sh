#!/usr/bin/env bash
# Lambda gives a function CPU in proportion to its memory: one full vCPU at 1,769 MB. This runs
# the bcrypt verification of the token endpoint under the same CPU share as each memory size,
# with a cgroup v1 CPU quota (root only; cgroup v1 cpu controller at /sys/fs/cgroup/cpu), to
# choose the functions' memory from measurements.
#
#   bench/lambda-memory.sh [COST] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cost="${1:-10}"
rounds="${2:-10}"
cargo build -q --example bcrypt_cost -p agentidp-integration
binary=target/debug/examples/bcrypt_cost
group=/sys/fs/cgroup/cpu/agentidp-lambda-sim
mkdir -p "$group"
trap 'rmdir "$group" 2>/dev/null || true' EXIT
period=100000
echo "| memory (MB) | vCPU share | bcrypt cost $cost verify |"
echo "| --- | --- | --- |"
for memory in 128 256 512 1024 1769; do
    quota=$(( period * memory / 1769 ))
    echo "$period" > "$group/cpu.cfs_period_us"
    echo "$quota" > "$group/cpu.cfs_quota_us"
    result=$(sh -c "echo \$\$ > $group/tasks && exec $binary $cost $rounds")
    share=$(python3 -c "print(f'{$memory/1769:.3f}')")
    echo "| $memory | $share | ${result#*: } |"
done
