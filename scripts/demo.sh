#!/usr/bin/env bash
# The demo: a 3-node lab with 2 pods per node, wired by the real weft-cni,
# then ICMP and TCP between every pair of pods. The lab stays up to explore.
set -euo pipefail
cd "$(dirname "$0")/.."
weftctl=target/release/weftctl

echo "== Bringing up the lab: 3 nodes, 2 pods each (a previous lab is torn down first)"
$weftctl lab up --nodes 3 --pods-per-node 2 >/dev/null
echo
echo "== Nodes and pods"
$weftctl lab status
echo
echo "== Connectivity: ICMP and TCP from every pod (rows) to every pod (columns)"
status=0
$weftctl lab check || status=$?
echo
echo "== On the underlay: a ping from node1-a to node2-a, captured on the lab's bridge (IP-in-IP, by Weft's eBPF)"
pod2_ip=$($weftctl lab status | awk '$1 == "node2-a" { print $5 }')
ip netns exec weft-fabric timeout 5 tcpdump -i br-underlay -n -c 4 --immediate-mode 'ip proto 4' 2>/dev/null &
capture=$!
sleep 1
ip netns exec weft-pod-node1-a ping -c 2 -i 0.2 "$pod2_ip" >/dev/null || status=$?
wait $capture || true
echo
echo "== The same packet traced hook by hook over the nodes' current maps and routes (weftctl lab trace)"
$weftctl lab trace --from node1-a --to "$pod2_ip" || status=$?
echo
echo "== node1's datapath counters"
$weftctl counters --node node1 || status=$?
echo
cat <<HINT
The lab is still up. To explore:
  $weftctl lab status --json                     # the cluster as JSON
  ip netns list                                              # the fabric, node and pod namespaces
  ip netns exec weft-node1 ip route                          # a node's routes (proto 87: Weft's own, 88: learned over BGP)
  $weftctl bgp peers --node node1                       # node1's BGP sessions with the other nodes
  ip netns exec weft-pod-node1-a ip addr                     # inside a pod
  ip netns exec weft-pod-node1-a ping -c1 10.244.2.1         # pod to pod, across nodes
  $weftctl lab exec node1-a -- ip route                 # the same, through weftctl
  $weftctl lab pod add --node node2 --name extra        # one more pod through the real CNI
  $weftctl endpoints --node node1                       # what an agent knows
  $weftctl counters --node node1                        # the eBPF programs' verdict counters
  $weftctl lab trace --from node1-a --to 10.244.3.1:80/tcp  # a packet's path, hook by hook
  ip netns exec weft-node1 tc filter show dev eth0 egress    # the IP-in-IP program on the uplink
  $weftctl lab check                                    # the matrix again
To tear it down:
  make demo-down     (or: $weftctl lab down)
HINT
exit $status
