#!/usr/bin/env bash
# End to end across network namespaces (separate hosts joined by shaped veth links): greedy text
# through 2, 3 and 4 worker hosts equals the single-process text; then 3 advertising workers
# (and a fourth of another cluster) found with --discover, no address typed, give it too. Exit 77 (skipped) when not
# root or when this kernel/container does not allow network namespaces.
#   tests/cluster/netns_e2e.sh HEARTH_BINARY MODEL
set -uo pipefail
HEARTH="$1"
MODEL="$2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NETNS="$ROOT/scripts/netns-cluster.sh"
[[ $(id -u) -eq 0 ]] || { echo "skipped: needs root"; exit 77; }
[[ -f "$MODEL" ]] || { echo "skipped: $MODEL not fetched"; exit 77; }
# What the cluster script needs: a namespace, a veth pair into it, a bridge, tbf shaping.
probe() {
  ip netns add hearth-e2e-probe &&
    ip link add hearth-e2e-v type veth peer name eth0 netns hearth-e2e-probe &&
    ip link add hearth-e2e-br type bridge &&
    tc qdisc add dev hearth-e2e-v root tbf rate 1gbit burst 256kb latency 50ms
}
probe_ok=1
probe >/dev/null 2>&1 || probe_ok=0
ip link del hearth-e2e-br >/dev/null 2>&1
ip link del hearth-e2e-v >/dev/null 2>&1
ip netns del hearth-e2e-probe >/dev/null 2>&1
[[ $probe_ok -eq 1 ]] || { echo "skipped: network namespaces, veth, bridges or tc not allowed here"; exit 77; }
trap 'HEARTH="$HEARTH" "$NETNS" down >/dev/null 2>&1' EXIT

PROMPT="Write one sentence about the sea."
want="$("$HEARTH" run -m "$MODEL" --chat --temp 0 -n 32 --ignore-eos -p "$PROMPT" 2>/dev/null)" || exit 1
[[ -n "$want" ]] || { echo "FAIL: empty single-process output"; exit 1; }
for n in 2 3 4; do
  rate=1gbit
  [[ $n -eq 3 ]] && rate=100mbit
  workers="$(HEARTH="$HEARTH" "$NETNS" up "$n" --rate "$rate")" || { echo "FAIL: netns-cluster.sh up $n"; exit 1; }
  got="$("$HEARTH" run -m "$MODEL" --chat --temp 0 -n 32 --ignore-eos -p "$PROMPT" --workers "$workers" \
         --cluster-key /tmp/hearth-netns/cluster.key 2>/tmp/hearth-netns-e2e.err)"
  if [[ "$got" != "$want" ]]; then
    echo "FAIL: $n hosts ($rate) gave different text"; echo "want: $want"; echo "got:  $got"; cat /tmp/hearth-netns-e2e.err
    exit 1
  fi
  echo "ok: $n hosts ($rate links): same 32 greedy tokens as one process"
  HEARTH="$HEARTH" "$NETNS" down
done

# Discovery: three workers announce themselves, a fourth with another key too; the coordinator
# is given no address, finds the three of its cluster (never the stranger) and gives the same text.
HEARTH="$HEARTH" "$NETNS" up 3 --advertise --stranger >/dev/null || { echo "FAIL: netns-cluster.sh up 3 --advertise"; exit 1; }
got="$("$HEARTH" run -m "$MODEL" --chat --temp 0 -n 32 --ignore-eos -p "$PROMPT" --discover --min-nodes 3 \
       --discover-timeout 20 --cluster-key /tmp/hearth-netns/cluster.key 2>/tmp/hearth-netns-e2e.err)"
if [[ "$got" != "$want" ]]; then
  echo "FAIL: 3 discovered hosts gave different text"; echo "want: $want"; echo "got:  $got"; cat /tmp/hearth-netns-e2e.err
  exit 1
fi
found="$(grep -m1 '^hearth: discovered' /tmp/hearth-netns-e2e.err)"
for i in 1 2 3; do
  [[ "$found" == *"10.77.0.1$i:7070"* ]] || { echo "FAIL: worker $i not discovered: $found"; exit 1; }
done
if [[ "$found" == *"10.77.0.14"* ]] || grep -q "10.77.0.14" /tmp/hearth-netns-e2e.err; then
  echo "FAIL: the other cluster's worker was used: $found"; exit 1
fi
echo "ok: 3 hosts found by --discover (the other cluster's worker ignored): same 32 greedy tokens as one process"
planned="$("$HEARTH" plan -m "$MODEL" --discover --discover-timeout 3 --cluster-key /tmp/hearth-netns/cluster.key -o json)" ||
  { echo "FAIL: hearth plan --discover"; exit 1; }
for i in 1 2 3; do
  [[ "$planned" == *"10.77.0.1$i:7070"* ]] || { echo "FAIL: hearth plan --discover did not plan over worker $i"; exit 1; }
done
[[ "$planned" != *"10.77.0.14"* ]] || { echo "FAIL: hearth plan --discover planned over the other cluster's worker"; exit 1; }
echo "ok: hearth plan --discover plans over the same 3 hosts"

# The same with `hearth serve --discover --min-nodes 3`, while tcpdump captures the veth links: the
# answer is the single process's, and neither the prompt's token ids nor the answer's cross a
# link in clear (the links are encrypted; tests/api/test_link_encryption.py has the control).
if command -v tcpdump >/dev/null; then
  tcpdump -i hearth-br0 -U -s 0 -w /tmp/hearth-netns-e2e.pcap tcp >/dev/null 2>&1 &
  dump=$!
  # A port the kernel has just handed out as free; other tests run beside this one, so a port can
  # still be taken before serve binds it: then another.
  for _ in 1 2 3; do
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$HEARTH" serve -m "$MODEL" --port "$port" --discover --min-nodes 3 --discover-timeout 20 \
      --cluster-key /tmp/hearth-netns/cluster.key >/tmp/hearth-netns-serve.log 2>&1 &
    serve=$!
    for _ in $(seq 1 300); do
      [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]] && break
      kill -0 "$serve" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$serve" 2>/dev/null || ! grep -q "cannot listen" /tmp/hearth-netns-serve.log || continue
    break
  done
  body='{"model":"m","messages":[{"role":"user","content":"'"$PROMPT"'"}],"max_tokens":32,"ignore_eos":true,"temperature":0}'
  answer="$(curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")"
  sleep 0.5
  kill -INT "$dump"; wait "$dump" 2>/dev/null
  verdict="$(python3 - "$answer" "$port" "$PROMPT" "$want" <<'PY'
import json, struct, sys, urllib.request
answer, port, prompt, want = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
text = answer["choices"][0]["message"]["content"]
def tokens(t):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize", data=json.dumps({"content": t}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["tokens"]
data = open("/tmp/hearth-netns-e2e.pcap", "rb").read()
runs = [b"".join(struct.pack("<i", t) for t in p) for p in (lambda ids: [ids[i:i + 4] for i in range(len(ids) - 3)])(tokens(prompt))]
singles = [struct.pack("<i", t) for t in set(tokens(text)) if t >= 1000]
if text.rstrip("\n") != want: print(f"different text: {text!r}"); sys.exit()  # $(...) drops trailing newlines
if len(data) < 10000: print(f"the capture holds {len(data)} bytes only"); sys.exit()
seen = sum(r in data for r in runs) + sum(s in data for s in singles)
print("ok" if seen == 0 else f"{seen} token patterns of the request found in clear on the links")
PY
)"
  kill "$serve"; wait "$serve" 2>/dev/null
  [[ "$verdict" == ok ]] || { echo "FAIL: serve --discover: $verdict"; tail -20 /tmp/hearth-netns-serve.log; exit 1; }
  echo "ok: serve --discover over 3 hosts: the single process's text; no token of it in clear on the veth links"
fi
HEARTH="$HEARTH" "$NETNS" down
