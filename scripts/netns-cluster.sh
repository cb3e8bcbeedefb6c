#!/usr/bin/env bash
# A test cluster of separate hosts on one machine: N network namespaces, each joined to a bridge
# in the root namespace by a veth pair shaped with a tc token bucket, and a `hearth worker` in
# each. Needs root (ip netns, tc).
#
#   scripts/netns-cluster.sh up N [--rate 1gbit|100mbit|...] [--key FILE] [--model-dir DIR] [--threads T]
#                                 [--memory SIZE] [--advertise] [--stranger]
#       prints the workers' list (host:port,...) on stdout; the key is --key, or a fresh one
#       written to /tmp/hearth-netns/cluster.key. --advertise: the workers announce themselves
#       (for `--discover`); --stranger: one more advertising worker, with another key, that a
#       coordinator must ignore (not in the list printed)
#   scripts/netns-cluster.sh down
#       stops the workers and removes every namespace, link and the bridge
#
# Addresses: the bridge is 10.77.0.1/24 in the root namespace; worker i (1..N) is 10.77.0.(10+i)
# on port 7070, in namespace hearth-ns<i>.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE=/tmp/hearth-netns
BRIDGE=hearth-br0
HEARTH="${HEARTH:-$ROOT/build/bin/hearth}"

die() { echo "netns-cluster.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces and tc)"

down() {
  if [[ -f $STATE/pids ]]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$STATE/pids"
    sleep 0.2
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$STATE/pids"
  fi
  for ns in $(ip netns list 2>/dev/null | awk '/^hearth-ns/ {print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '/hearth-v[0-9]+/ {sub(/@.*/, "", $2); print $2}'); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
}

up() {
  local n="$1"; shift
  local rate=1gbit key="" threads=1 stranger=0
  local model_dirs=() memory=() advertise=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --rate) rate="$2"; shift 2 ;;
      --key) key="$2"; shift 2 ;;
      --model-dir) model_dirs+=(--model-dir "$2"); shift 2 ;;
      --threads) threads="$2"; shift 2 ;;
      --memory) memory=(--memory "$2"); shift 2 ;;
      --advertise) advertise=(--advertise); shift ;;
      --stranger) stranger=1; shift ;;
      *) die "unknown argument '$1'" ;;
    esac
  done
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 16 ]] || die "N must be 1..16"
  [[ -x "$HEARTH" ]] || die "$HEARTH is not built"
  down
  mkdir -p "$STATE"
  if [[ -z "$key" ]]; then
    key="$STATE/cluster.key"
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$key"; echo >>"$key")
  fi
  # No IGMP snooping: the discovery beacons (multicast) reach every port, the host's included.
  ip link add "$BRIDGE" type bridge mcast_snooping 0
  ip addr add 10.77.0.1/24 dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local workers=() total=$n
  (( stranger )) && total=$((n + 1))
  if (( stranger )); then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/stranger.key"; echo >>"$STATE/stranger.key")
  fi
  for i in $(seq 1 "$total"); do
    local ns="hearth-ns$i" host="hearth-v$i" addr="10.77.0.$((10 + i))"
    ip netns add "$ns"
    ip link add "$host" type veth peer name eth0 netns "$ns"
    ip link set "$host" master "$BRIDGE"
    ip link set "$host" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Token-bucket shaping in both directions (netem is not available on every kernel).
    tc qdisc add dev "$host" root tbf rate "$rate" burst 256kb latency 50ms
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 50ms
    local worker_key="$key"
    (( i > n )) && worker_key="$STATE/stranger.key"  # the stranger: another cluster's worker
    ip netns exec "$ns" "$HEARTH" worker --listen "$addr:7070" --cluster-key "$worker_key" --threads "$threads" \
      "${model_dirs[@]}" "${memory[@]}" "${advertise[@]}" >"$STATE/worker$i.out" 2>"$STATE/worker$i.log" &
    echo $! >>"$STATE/pids"
    (( i <= n )) && workers+=("$addr:7070")
  done
  for i in $(seq 1 "$total"); do  # wait until each worker listens
    for _ in $(seq 1 100); do
      grep -q "listening on" "$STATE/worker$i.out" 2>/dev/null && break
      sleep 0.1
    done
    grep -q "listening on" "$STATE/worker$i.out" || die "worker $i did not start: $(cat "$STATE/worker$i.log")"
  done
  echo "netns-cluster.sh: $n workers up ($rate links), key $key" >&2
  (IFS=,; echo "${workers[*]}")
}

case "${1:-}" in
  up) shift; [[ $# -ge 1 ]] || die "usage: up N [--rate R] [--key FILE] [--model-dir DIR]"; up "$@" ;;
  down) down ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
