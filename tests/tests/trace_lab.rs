//! `weftctl lab trace` on live labs of three nodes, one per encapsulation
//! mode: the trace is read off the nodes' real pinned maps, routes and vxlan
//! entries, shows each hook on the way, and agrees with what real packets
//! between the same pods do. Needs root.

use std::time::Duration;

use serde_json::Value;
use weft_tests::*;

/// `weftctl lab trace --json` from `from` to `to`, parsed.
fn trace(lab: &Lab, from: &str, to: &str, extra: &[&str]) -> Value {
    let mut args = vec!["lab", "trace", "--from", from, "--to", to, "--json"];
    args.extend_from_slice(extra);
    let out = lab.ctl_ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("trace --json: {e}\n{out}"))
}

/// The trace as the text output shows it, for failure messages.
fn shown(v: &Value) -> String {
    let mut text: Vec<String> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| format!("note: {}", n.as_str().unwrap()))
        .collect();
    text.extend(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["text"].as_str().unwrap().to_string()),
    );
    text.push(format!("verdict: {}", v["summary"].as_str().unwrap()));
    text.join("\n")
}

fn steps(v: &Value) -> &Vec<Value> {
    v["steps"].as_array().unwrap()
}

/// The first step on `node` at `hook`.
fn step<'a>(v: &'a Value, node: &str, hook: &str) -> &'a Value {
    steps(v)
        .iter()
        .find(|s| s["node"] == node && s["hook"] == hook)
        .unwrap_or_else(|| panic!("no {hook} step on {node}:\n{}", shown(v)))
}

/// One ICMP echo, two seconds to answer.
fn one_echo() -> Echo {
    Echo::new(Duration::from_secs(2), 1)
}

/// A pod-to-pod trace from node1 to node2 shows the mode's path and ends
/// in the right pod; a real echo between them gets its answer.
fn pod_to_pod(lab: &Lab, encap: &str) {
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node2"));
    let b_ip = b.address().unwrap();
    let n2 = lab.node("node2").underlay_ip;
    let v = trace(lab, &a.name, &b_ip.to_string(), &[]);
    let text = shown(&v);
    println!("{encap}: {} -> {}\n{text}", a.name, b.name);

    let first = &steps(&v)[0];
    assert_eq!(
        (first["node"].as_str(), first["hook"].as_str()),
        (Some("node1"), Some("pod veth")),
        "{text}"
    );
    assert_eq!(first["counter"], "pass", "{text}");
    assert_eq!(first["pod"], a.name.as_str(), "{text}");
    match encap {
        "ipip" => {
            assert_eq!(
                step(&v, "node1", "uplink egress")["counter"],
                "encapsulate",
                "{text}"
            );
            let wire = steps(&v)
                .iter()
                .find(|s| s["hook"] == "underlay")
                .unwrap_or_else(|| panic!("nothing on the underlay:\n{text}"));
            assert!(
                wire["packet"].as_str().unwrap().contains(" ipip "),
                "{text}"
            );
            assert_eq!(
                step(&v, "node2", "uplink ingress")["counter"],
                "decapsulate",
                "{text}"
            );
        }
        "vxlan" => {
            let encap_step = step(&v, "node1", "vxlan device");
            assert!(
                encap_step["decision"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("encapsulated to {n2} vni 4096")),
                "{text}"
            );
            assert_eq!(
                step(&v, "node2", "vxlan device")["decision"],
                "decapsulated (vni 4096)",
                "{text}"
            );
            assert_ne!(step(&v, "node1", "uplink egress")["counter"], "encapsulate");
        }
        "none" => {
            assert_eq!(
                step(&v, "node1", "routing")["decision"],
                format!("via uplink, next hop {n2}, mtu 1500").as_str(),
                "{text}"
            );
            assert!(
                steps(&v)
                    .iter()
                    .all(|s| s["counter"] != "encapsulate" && s["hook"] != "vxlan device"),
                "{text}"
            );
        }
        _ => unreachable!(),
    }
    let last = steps(&v).last().unwrap();
    assert_eq!(
        (
            last["node"].as_str(),
            last["hook"].as_str(),
            last["pod"].as_str()
        ),
        (Some("node2"), Some("pod"), Some(b.name.as_str())),
        "{text}"
    );
    assert_eq!(v["verdict"]["outcome"], "delivered", "{text}");
    assert_eq!(v["verdict"]["pod"], b.name.as_str(), "{text}");
    assert_eq!(
        v["summary"],
        format!("delivered to pod {} on node2", b.name).as_str()
    );

    // The text output: one line per step and the verdict.
    let out = lab.ctl_ok(&["lab", "trace", "--from", &a.name, "--to", &b_ip.to_string()]);
    let step_lines = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(step_lines, steps(&v).len(), "{out}");
    assert!(
        out.ends_with(&format!("verdict: delivered to pod {} on node2\n", b.name)),
        "{out}"
    );

    // Reality agrees: the echo is answered, over TCP and UDP traces too.
    if let Err(e) = a.echo(b_ip, one_echo()) {
        panic!("{encap}: the trace says delivered: {e}");
    }
    for to in [format!("{b_ip}:80/tcp"), format!("{b_ip}:53/udp")] {
        let v = trace(lab, &a.name, &to, &[]);
        assert_eq!(v["verdict"]["outcome"], "delivered", "{}", shown(&v));
    }
}

/// Addresses nobody has: inside node2's pod CIDR, node2 has no route and
/// answers "network unreachable"; outside the cluster, node1 does. Real
/// echoes get the same answers.
fn nowhere(lab: &Lab, encap: &str) {
    let a = lab.status().pod_on("node1");
    let (n1, n2) = (lab.node("node1").underlay_ip, lab.node("node2").underlay_ip);
    for (to, node, node_ip) in [
        ("10.244.2.200", "node2", &n2),
        ("203.0.113.9", "node1", &n1),
    ] {
        let v = trace(lab, &a.name, to, &[]);
        let text = shown(&v);
        println!("{encap}: {} -> {to}\n{text}", a.name);
        let verdict = &v["verdict"];
        assert_eq!(
            (
                verdict["outcome"].as_str(),
                verdict["node"].as_str(),
                verdict["hook"].as_str(),
                verdict["reason"].as_str()
            ),
            (
                Some("dropped"),
                Some(node),
                Some("routing"),
                Some("no route")
            ),
            "{text}"
        );
        let icmp = &verdict["icmp"][0];
        assert_eq!(
            (icmp["type"].as_u64(), icmp["code"].as_u64()),
            (Some(3), Some(0)),
            "{text}"
        );
        assert_eq!(icmp["node"], node, "{text}");
        assert_eq!(icmp["delivered_to"], a.name.as_str(), "{text}");

        let real = match a.echo(to.parse().unwrap(), one_echo()) {
            Err(ProbeError::NoEchoReply {
                last: Some(last), ..
            }) => last,
            other => panic!("{encap}: echo to {to}: {other:?}"),
        };
        assert!(
            real.starts_with("destination unreachable (code 0) from "),
            "{encap}: echo to {to}: {real}"
        );
        // In vxlan the kernel answers from an address of the device the
        // packet came in on (the VTEP address); the twin always uses the
        // node's underlay address, so only the other modes compare it.
        if encap != "vxlan" {
            assert_eq!(icmp["from"], node_ip.as_str(), "{text}");
            assert!(
                real.ends_with(&format!(" from {node_ip}")),
                "{encap}: echo to {to}: {real}"
            );
        }
    }
}

/// A DF packet of exactly the pod MTU is delivered; one byte more is
/// refused on node1 with ICMP "fragmentation needed" for the pod MTU
/// (or by the veth). Real DF echoes agree on both sides of the line.
fn df_above_the_pod_mtu(lab: &Lab, encap: &str) {
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node2"));
    let b_ip = b.address().unwrap();
    let to = b_ip.to_string();
    let mtu = pod_mtu(&a);
    let fits = mtu.to_string();
    let v = trace(lab, &a.name, &to, &["--size", &fits, "--df"]);
    assert_eq!(v["verdict"]["outcome"], "delivered", "{}", shown(&v));

    let over = (mtu + 1).to_string();
    let v = trace(lab, &a.name, &to, &["--size", &over, "--df"]);
    let text = shown(&v);
    println!("{encap}: {} -> {} DF {over} bytes\n{text}", a.name, b.name);
    let verdict = &v["verdict"];
    assert_eq!(verdict["outcome"], "dropped", "{text}");
    assert_eq!(verdict["node"], "node1", "{text}");
    match verdict["hook"].as_str() {
        Some("routing") => {
            let icmp = &verdict["icmp"][0];
            assert_eq!(
                (
                    icmp["type"].as_u64(),
                    icmp["code"].as_u64(),
                    icmp["mtu"].as_u64()
                ),
                (Some(3), Some(4), Some(u64::from(mtu))),
                "{text}"
            );
            assert_eq!(icmp["delivered_to"], a.name.as_str(), "{text}");
        }
        Some("pod veth") => assert!(
            verdict["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("above the veth MTU {mtu}")),
            "{text}"
        ),
        _ => panic!("{encap}: unexpected verdict:\n{text}"),
    }
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains(&format!("({mtu})"))),
        "the trace notes that the pod's own MTU is smaller:\n{text}"
    );
    df_echoes_stop_at(&a, b_ip, mtu);
}

fn check_mode(encap: &str) -> Lab {
    let options = UpOptions {
        encap: encap.parse().unwrap(),
        ..up_options(3, 1)
    };
    let lab = Lab::build(&format!("trace-{encap}"), options);
    lab.check();
    pod_to_pod(&lab, encap);
    nowhere(&lab, encap);
    df_above_the_pod_mtu(&lab, encap);
    lab
}

/// Under a policy, each pod veth step says what policy decided and which
/// policy map entry decided it: the allow rule of the destination's
/// ingress, or its isolation marker, where the probe is dropped.
fn policy_decides(lab: &Lab) {
    lab.apply(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-80, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from: [podSelector: {}]
    ports: [port: 80]
",
    );
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node2"));
    let (a_ip, b_ip) = (a.address().unwrap(), b.address().unwrap());
    let veth_policy = |v: &Value, node: &str| -> String {
        steps(v)
            .iter()
            .filter(|s| s["node"] == node && s["hook"] == "pod veth")
            .map(|s| s["policy"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let allowed = eventually("the policy in node2's maps", Duration::from_secs(5), || {
        let v = trace(lab, &a.name, &format!("{b_ip}:80/tcp"), &[]);
        let policy = veth_policy(&v, "node2");
        if policy.contains("allowed by rule") {
            Ok(v)
        } else {
            Err(shown(&v))
        }
    });
    let text = shown(&allowed);
    println!("policy, allowed:\n{text}");
    assert!(
        veth_policy(&allowed, "node2").contains(&format!(
            "ingress of {b_ip}: allowed by rule [ingress peer identity "
        )) && veth_policy(&allowed, "node2").contains(&format!("({a_ip}/32), TCP, port 80]")),
        "{text}"
    );
    // node1 holds b's rules nowhere, and a's egress is not isolated.
    assert!(
        veth_policy(&allowed, "node1").contains("neither end isolated"),
        "{text}"
    );
    assert_eq!(allowed["verdict"]["outcome"], "delivered", "{text}");

    let denied = trace(lab, &a.name, &format!("{b_ip}:81/tcp"), &[]);
    let text = shown(&denied);
    println!("policy, denied:\n{text}");
    assert_eq!(denied["verdict"]["outcome"], "dropped", "{text}");
    assert_eq!(denied["verdict"]["node"], "node2", "{text}");
    assert_eq!(denied["verdict"]["hook"], "pod veth", "{text}");
    assert!(
        denied["verdict"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "ingress of {b_ip}: DENIED by the isolation marker: no rule allows peer identity"
            )),
        "{text}"
    );
    lab.ctl_ok(&["lab", "delete", "networkpolicy", "default/web-80"]);
}

#[test]
fn trace_ipip() {
    let lab = check_mode("ipip");
    bad_input(&lab);
    policy_decides(&lab);
}

#[test]
fn trace_vxlan() {
    check_mode("vxlan");
}

#[test]
fn trace_none() {
    check_mode("none");
}

/// Unknown pods, unparsable targets and a node without pins are errors
/// (non-zero exit, a clear message), not verdicts.
fn bad_input(lab: &Lab) {
    let a = lab.status().pod_on("node1");
    let out = lab.ctl(&[
        "lab",
        "trace",
        "--from",
        "no-such-pod",
        "--to",
        "10.244.2.1",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains("has no pod \"no-such-pod\""),
        "{}",
        show(&out)
    );
    for to in [
        "10.244.2.1:80",
        "10.244.2.1:80/sctp",
        "pod-b",
        "10.244.2.1:99999/tcp",
    ] {
        let out = lab.ctl(&["lab", "trace", "--from", &a.name, "--to", to]);
        assert!(!out.status.success(), "--to {to}: {}", show(&out));
        assert!(show(&out).contains("--to"), "--to {to}: {}", show(&out));
    }

    // The same lab as recorded, but node3's pins are said to be elsewhere.
    let mut record = lab.lab().load().unwrap();
    record.nodes[2].bpffs_dir = "/sys/fs/bpf/weft-lab/no-such-pins".into();
    let copy = tempfile::tempdir().unwrap();
    record.state_dir = copy.path().to_path_buf();
    record.save().unwrap();
    let out = weftctl(&[
        "lab",
        "trace",
        "--lab",
        &lab.name,
        "--state-dir",
        copy.path().to_str().unwrap(),
        "--from",
        &a.name,
        "--to",
        "10.244.2.1",
    ]);
    let text = show(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "node node3: reading the pinned maps under /sys/fs/bpf/weft-lab/no-such-pins"
        ),
        "{text}"
    );
}
