//! A Kubernetes control plane for labs and tests: etcd, kube-apiserver and
//! kube-controller-manager, as real processes inside a network namespace
//! the caller owns, with their own certificates (issue #11).
//!
//! The binaries are the ones `scripts/build-control-plane.sh` builds into
//! the repository's tool directory (Debian packages no Kubernetes server
//! and no image can be pulled here). The setup is the smallest one that is
//! still a real cluster's: TLS everywhere the agents connect, client
//! certificates for the administrator and the controller manager, a
//! service-account key pair so tokens are real, RBAC authorization (so a
//! least-privilege role is exercised, not assumed), and the controller
//! manager's node IPAM giving each Node its `spec.podCIDR`, as in kind.
//!
//! etcd listens on the namespace's loopback only; the API server on the
//! given address. Every process is ended by its own pid (SIGTERM, then
//! SIGKILL) on [`ControlPlane::stop`] and on drop.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{in_netns, log_tail};

/// The API server's port.
pub const API_PORT: u16 = 6443;
/// Where `scripts/build-control-plane.sh` puts the binaries, under the
/// repository: `control-plane-<version>/bin`.
pub const TOOL_DIR: &str = ".tools";
/// The controller manager's pod range and per-node mask, as kind's.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const NODE_CIDR_MASK: u8 = 24;
/// Inside 10.96.0.0/12 (kube-apiserver's default range); its first address
/// is the `kubernetes` Service, in the serving certificate.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// How long the API server may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where and how to run a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Certificates, kubeconfigs, etcd's data and the logs.
    pub dir: PathBuf,
    /// The network namespace the processes run in.
    pub netns: String,
    /// The API server's address inside that namespace.
    pub address: Ipv4Addr,
    /// The directory holding etcd, kube-apiserver, kube-controller-manager
    /// and kubectl.
    pub bin_dir: PathBuf,
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    config: ControlPlaneConfig,
    /// The processes, in start order (stopped in reverse).
    processes: Vec<(&'static str, Child)>,
    /// Each process's arguments, to start it again ([`ControlPlane::restart`]).
    args: Vec<(&'static str, Vec<String>)>,
    /// An administrator's kubeconfig (group system:masters).
    pub admin_kubeconfig: PathBuf,
    /// How long it took until the API server was ready.
    pub ready_after: Duration,
}

/// The newest `control-plane-*/bin` under the repository's tool directory,
/// found from `start` upwards (a test's or weftctl's directory).
pub fn find_bin_dir(start: &Path) -> Result<PathBuf> {
    for dir in start.ancestors() {
        let tools = dir.join(TOOL_DIR);
        let Ok(entries) = fs::read_dir(&tools) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("control-plane-")
            })
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("kube-apiserver").exists())
            .collect();
        found.sort();
        if let Some(bin) = found.pop() {
            return Ok(bin);
        }
    }
    bail!(
        "no Kubernetes control plane under a {TOOL_DIR}/control-plane-*/bin above {}: \
         run scripts/build-control-plane.sh",
        start.display()
    )
}

impl ControlPlane {
    /// Writes the certificates and configuration into `config.dir`, starts
    /// etcd, the API server and the controller manager, and returns once
    /// the API server is ready. On failure, whatever was started is ended.
    pub fn start(config: ControlPlaneConfig) -> Result<ControlPlane> {
        for bin in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ] {
            if !config.bin_dir.join(bin).exists() {
                bail!(
                    "{} has no {bin}: run scripts/build-control-plane.sh",
                    config.bin_dir.display()
                );
            }
        }
        fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let pki = Pki::write(&config.dir.join("pki"), config.address)?;
        let server = format!("https://{}:{API_PORT}", config.address);
        let admin_kubeconfig = config.dir.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &pki.ca_cert,
            pki.admin.credentials(),
        )?;
        let cm_kubeconfig = config.dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &cm_kubeconfig,
            &server,
            &pki.ca_cert,
            pki.controller_manager.credentials(),
        )?;

        let mut plane = ControlPlane {
            config,
            processes: Vec::new(),
            args: Vec::new(),
            admin_kubeconfig,
            ready_after: Duration::ZERO,
        };
        let started = Instant::now();
        plane.spawn("etcd", plane.etcd_args())?;
        plane.spawn("kube-apiserver", plane.apiserver_args(&pki))?;
        plane.wait_ready(started)?;
        plane.ready_after = started.elapsed();
        let cm_args = plane.controller_manager_args(&pki, &cm_kubeconfig);
        plane.spawn("kube-controller-manager", cm_args)?;
        Ok(plane)
    }

    fn etcd_args(&self) -> Vec<String> {
        let data = self.config.dir.join("etcd");
        [
            "--name=weft-lab",
            &format!("--data-dir={}", data.display()),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=weft-lab=http://127.0.0.1:2380",
            // A lab's etcd needs no durability across power loss.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        .map(String::from)
        .to_vec()
    }

    fn apiserver_args(&self, pki: &Pki) -> Vec<String> {
        let p = |path: &Path| path.display().to_string();
        vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={}", self.config.address),
            format!("--advertise-address={}", self.config.address),
            format!("--secure-port={API_PORT}"),
            format!("--tls-cert-file={}", p(&pki.apiserver.cert)),
            format!("--tls-private-key-file={}", p(&pki.apiserver.key)),
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            format!("--service-account-key-file={}", p(&pki.sa_public)),
            format!("--service-account-signing-key-file={}", p(&pki.sa_private)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            format!("--cert-dir={}", p(&self.config.dir.join("pki"))),
            "--profiling=false".into(),
        ]
    }

    fn controller_manager_args(&self, pki: &Pki, kubeconfig: &Path) -> Vec<String> {
        let p = |path: &Path| path.display().to_string();
        vec![
            format!("--kubeconfig={}", p(kubeconfig)),
            format!("--authentication-kubeconfig={}", p(kubeconfig)),
            format!("--authorization-kubeconfig={}", p(kubeconfig)),
            // Serves its health port on the namespace's loopback only.
            "--bind-address=127.0.0.1".into(),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            format!("--node-cidr-mask-size={NODE_CIDR_MASK}"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--service-account-private-key-file={}", p(&pki.sa_private)),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            "--use-service-account-credentials=true".into(),
            // No kubelet runs anywhere (the lab and the tests play its
            // part): the node lifecycle controller would find no heartbeat
            // on any Node, mark it NotReady, taint it NoExecute, and the
            // taint eviction controller would then delete its pods. Every
            // other default controller runs: node IPAM (pod CIDRs), the
            // service-account and namespace controllers (a new namespace's
            // `default` ServiceAccount, which a Pod needs), the garbage
            // collector.
            "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller".into(),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
        ]
    }

    /// Starts `name` in the namespace, logging to `<dir>/<name>.log`.
    fn spawn(&mut self, name: &'static str, args: Vec<String>) -> Result<()> {
        let program = self.config.bin_dir.join(name);
        let child = spawn_logged(&self.config.netns, &self.config.dir, name, &program, &args)?;
        self.processes.push((name, child));
        self.args.retain(|(n, _)| *n != name);
        self.args.push((name, args));
        Ok(())
    }

    /// The process id of `name` (`kube-apiserver`, `etcd`, ...), to signal it.
    pub fn pid(&self, name: &str) -> Option<u32> {
        (self.processes.iter())
            .find(|(n, _)| *n == name)
            .map(|(_, child)| child.id())
    }

    /// Kills `name` (SIGKILL: a crash) and starts it again with the same
    /// arguments; for the API server, waits until it is ready again.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let index = (self.processes.iter().position(|(n, _)| *n == name))
            .with_context(|| format!("no control plane process {name}"))?;
        let (name, mut child) = self.processes.remove(index);
        let _ = child.kill();
        child.wait()?;
        let args = (self.args.iter().find(|(n, _)| *n == name))
            .map(|(_, a)| a.clone())
            .with_context(|| format!("{name}'s arguments"))?;
        self.spawn(name, args)?;
        if name == "kube-apiserver" {
            self.wait_ready(Instant::now())?;
        }
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.config.dir.join(format!("{name}.log"))
    }

    /// Polls `/readyz` until the API server says ok; fails early, quoting
    /// its log, if a process has exited.
    fn wait_ready(&mut self, started: Instant) -> Result<()> {
        loop {
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited ({status}) while the control plane was starting:\n{}",
                        klog_errors(&self.config.dir.join(format!("{name}.log")))
                    );
                }
            }
            if let Ok(out) = self.kubectl(&["get", "--raw", "/readyz"])
                && out.trim() == "ok"
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the API server is not ready after {READY_TIMEOUT:?}:\n{}",
                    log_tail(&self.log_path("kube-apiserver"), 15)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs kubectl as the administrator (from the namespace the API
    /// server listens in); its stdout, or its stderr as the error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// [`ControlPlane::kubectl`] with `input` on its stdin (`apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        kubectl(&self.kubectl_target(), args, input)
    }

    /// Where kubectl runs and with which identity, to reach this control
    /// plane as the administrator after it is detached.
    pub fn kubectl_target(&self) -> KubectlTarget {
        KubectlTarget {
            bin_dir: self.config.bin_dir.clone(),
            kubeconfig: self.admin_kubeconfig.clone(),
            netns: self.config.netns.clone(),
        }
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        format!("https://{}:{API_PORT}", self.config.address)
    }

    /// Writes a kubeconfig at `path` that authenticates as ServiceAccount
    /// `namespace/name` with a token the API server issues for `hours`:
    /// what a DaemonSet's pod is given, so its RBAC is exercised as is.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        hours: u32,
        path: &Path,
    ) -> Result<()> {
        let duration = format!("--duration={hours}h");
        let token = self.kubectl(&["create", "token", name, "-n", namespace, &duration])?;
        write_kubeconfig(
            path,
            &self.server(),
            &self.ca_cert(),
            Credentials::Token(token.trim()),
        )
    }

    /// The cluster CA's certificate, for clients' kubeconfigs.
    pub fn ca_cert(&self) -> PathBuf {
        self.config.dir.join("pki").join("ca.crt")
    }

    /// Ends every process, the last started first: SIGTERM, then SIGKILL
    /// after 5 s.
    pub fn stop(&mut self) {
        while let Some((name, mut child)) = self.processes.pop() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        eprintln!("control plane: {name} killed after 5 s");
                        break;
                    }
                }
            }
        }
    }
}

impl ControlPlane {
    /// Leaves the processes running beyond this value (a lab's control
    /// plane outlives the weftctl that started it) and returns them by name
    /// and pid, in start order, for [`stop_detached`].
    pub fn detach(mut self) -> Vec<(String, u32)> {
        std::mem::take(&mut self.processes)
            .into_iter()
            .map(|(name, child)| (name.to_string(), child.id()))
            .collect()
    }
}

/// Whether `pid` is alive and is control-plane process `name` started
/// with its files in `dir` (a recorded pid may have been reused since).
pub fn is_process_of(pid: u32, name: &str, dir: &Path) -> bool {
    if crate::process::is_zombie(pid) {
        return false;
    }
    let Some(args) = crate::process::cmdline(pid) else {
        return false;
    };
    let dir = dir.display().to_string();
    args.first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == name))
        && args.iter().skip(1).any(|a| a.contains(&dir))
}

/// Kills detached control-plane process `name` (`pid`, started with its
/// files in `dir`) with SIGKILL, as a crash would, and after `down` starts
/// it again in `netns` with the same command line, appending to the same
/// log. Returns the new pid; the process is detached like the first.
pub fn respawn_detached(
    netns: &str,
    dir: &Path,
    name: &str,
    pid: u32,
    down: Duration,
) -> Result<u32> {
    if !is_process_of(pid, name, dir) {
        bail!("{name} (pid {pid}) is not running");
    }
    let argv = crate::process::cmdline(pid).with_context(|| format!("{name}'s command line"))?;
    let (program, args) = argv.split_first().context("an empty command line")?;
    kill_and_wait(pid, name)?;
    thread::sleep(down);
    let child = spawn_logged(netns, dir, name, Path::new(program), args)?;
    Ok(child.id())
}

/// Starts `program` as control-plane process `name` in `netns`, its output
/// appended to `<dir>/<name>.log`.
fn spawn_logged(
    netns: &str,
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
) -> Result<Child> {
    let log_path = dir.join(format!("{name}.log"));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    in_netns(&mut command, netns, true)?;
    command
        .spawn()
        .with_context(|| format!("starting {name} in {netns}"))
}

/// SIGKILLs control-plane process `name` (`pid`) and waits up to 5 s
/// until it has ended, its ports free again.
fn kill_and_wait(pid: u32, name: &str) -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    if !crate::process::wait_ended(pid, Duration::from_secs(5)) {
        bail!("{name} (pid {pid}) is still alive 5 s after SIGKILL");
    }
    Ok(())
}

/// Ends detached control-plane processes (`(name, pid)` in start order,
/// as [`ControlPlane::detach`] gave them), the last started first: only
/// those that still are that process of `dir`; SIGTERM, then SIGKILL after
/// 5 s. Returns how many were running.
pub fn stop_detached(processes: &[(String, u32)], dir: &Path) -> Result<usize> {
    use nix::sys::signal::{Signal, kill};
    let mut stopped = 0;
    for (name, pid) in processes.iter().rev() {
        if !is_process_of(*pid, name, dir) {
            continue;
        }
        stopped += 1;
        let target = nix::unistd::Pid::from_raw(*pid as i32);
        let _ = kill(target, Signal::SIGTERM);
        if !crate::process::wait_ended(*pid, Duration::from_secs(5)) {
            eprintln!("control plane: {name} (pid {pid}) killed after 5 s");
            kill_and_wait(*pid, name)?;
        }
    }
    Ok(stopped)
}

/// How to run kubectl against a control plane: the binary's directory,
/// the kubeconfig, and the network namespace it runs in (where the API
/// server's address is reachable).
#[derive(Debug, Clone)]
pub struct KubectlTarget {
    pub bin_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub netns: String,
}

/// Runs kubectl with `args` (and `input` on its stdin, for `-f -`); its
/// stdout, or its stderr as the error.
pub fn kubectl(target: &KubectlTarget, args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut command = Command::new(target.bin_dir.join("kubectl"));
    command
        .arg(format!("--kubeconfig={}", target.kubeconfig.display()))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_netns(&mut command, &target.netns, false)?;
    let mut child = command.spawn().context("starting kubectl")?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A certificate and its key.
#[derive(Debug, Clone)]
struct KeyPair {
    cert: PathBuf,
    key: PathBuf,
}

impl KeyPair {
    fn credentials(&self) -> Credentials<'_> {
        Credentials::Certificate {
            cert: &self.cert,
            key: &self.key,
        }
    }
}

/// The cluster's certificates and the service-account signing key.
struct Pki {
    ca_cert: PathBuf,
    apiserver: KeyPair,
    admin: KeyPair,
    controller_manager: KeyPair,
    sa_private: PathBuf,
    sa_public: PathBuf,
}

impl Pki {
    /// A fresh CA (P-256, 10 years), the API server's serving certificate
    /// (its address, loopback and the `kubernetes` Service's names), client
    /// certificates whose subject is the identity RBAC sees, and the
    /// service-account key pair, made with openssl.
    fn write(dir: &Path, address: Ipv4Addr) -> Result<Pki> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_key = dir.join("ca.key");
        let ca_cert = dir.join("ca.crt");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=weft-lab-ca",
            "-keyout",
            &ca_key.display().to_string(),
            "-out",
            &ca_cert.display().to_string(),
        ])?;
        let sign = |name: &str, subject: &str, extensions: &str| -> Result<KeyPair> {
            let pair = KeyPair {
                cert: dir.join(format!("{name}.crt")),
                key: dir.join(format!("{name}.key")),
            };
            let csr = dir.join(format!("{name}.csr"));
            let ext = dir.join(format!("{name}.ext"));
            fs::write(&ext, extensions)?;
            openssl(&[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &pair.key.display().to_string(),
                "-out",
                &csr.display().to_string(),
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr.display().to_string(),
                "-CA",
                &ca_cert.display().to_string(),
                "-CAkey",
                &ca_key.display().to_string(),
                "-CAcreateserial",
                "-days",
                "3650",
                "-extfile",
                &ext.display().to_string(),
                "-out",
                &pair.cert.display().to_string(),
            ])?;
            Ok(pair)
        };
        let apiserver = sign(
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:{address},IP:127.0.0.1,\
                 IP:{KUBERNETES_SERVICE_IP},DNS:kubernetes,DNS:kubernetes.default,\
                 DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            ),
        )?;
        let client = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                      extendedKeyUsage=clientAuth\n";
        let admin = sign("admin", "/O=system:masters/CN=kubernetes-admin", client)?;
        let controller_manager = sign(
            "controller-manager",
            "/CN=system:kube-controller-manager",
            client,
        )?;
        let sa_private = dir.join("sa.key");
        let sa_public = dir.join("sa.pub");
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            &sa_private.display().to_string(),
        ])?;
        openssl(&[
            "pkey",
            "-in",
            &sa_private.display().to_string(),
            "-pubout",
            "-out",
            &sa_public.display().to_string(),
        ])?;
        Ok(Pki {
            ca_cert,
            apiserver,
            admin,
            controller_manager,
            sa_private,
            sa_public,
        })
    }
}

/// The error and fatal lines of a component's log (klog's `E`/`F`
/// prefixes), or its tail when it has none: what made it stop.
fn klog_errors(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| {
            let mut chars = l.chars();
            matches!(chars.next(), Some('E' | 'F'))
                && chars.next().is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    match errors.len() {
        0 => log_tail(path, 15),
        n => errors[n.saturating_sub(5)..].join("\n"),
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "openssl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Who a kubeconfig authenticates as.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// A client certificate and its key (the subject is the identity).
    Certificate { cert: &'a Path, key: &'a Path },
    /// A bearer token (a ServiceAccount's).
    Token(&'a str),
}

/// A kubeconfig for `user` against `server`, trusting `ca_cert`; readable
/// by its owner only, as it may hold a token.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    user: Credentials,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let user = match user {
        Credentials::Certificate { cert, key } => format!(
            "client-certificate: {}\n    client-key: {}",
            cert.display(),
            key.display()
        ),
        Credentials::Token(token) => format!("token: {token}"),
    };
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: weft-lab
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: user
  user:
    {user}
contexts:
- name: weft-lab
  context: {{cluster: weft-lab, user: user}}
current-context: weft-lab
",
        ca = ca_cert.display(),
    );
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
