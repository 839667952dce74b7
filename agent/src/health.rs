//! `/healthz` and `/readyz` over plain HTTP, for the DaemonSet's probes.
//!
//! Liveness is about this process only: its loops still turn. Nothing
//! outside it (the API server gone, a BGP peer down) may fail it, or the
//! kubelet would restart an agent that can do nothing better, as
//! kube-router's did when the API servers went away (kube-router#739,
//! #810). Readiness is about the node: first sync, first pass, and every
//! BGP session the node wants established.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::node::Node;

/// What the probes read: the main loop's heartbeat, what the agent is
/// waiting for before its node exists, and the node once it does.
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat.
    beat_ms: AtomicU64,
    /// How long without a heartbeat is dead.
    limit: Duration,
    waiting: Mutex<String>,
    node: OnceLock<Arc<Node>>,
}

/// A probe's answer: 200 with `Ok`'s text, 503 with `Err`'s.
pub type Verdict = Result<String, String>;

impl Health {
    pub fn new(limit: Duration) -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            limit,
            waiting: Mutex::new("starting".into()),
            node: OnceLock::new(),
        })
    }

    /// The loops turned.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Release);
    }

    /// What the agent waits for now (before its node exists).
    pub fn waiting_for(&self, what: impl Into<String>) {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = what.into();
        self.beat();
    }

    pub fn node_started(&self, node: Arc<Node>) {
        let _ = self.node.set(node);
        self.beat();
    }

    /// Alive: the last heartbeat is recent.
    pub fn live(&self, now: Instant) -> Verdict {
        liveness(
            Duration::from_millis(self.beat_ms.load(Ordering::Acquire)),
            now.saturating_duration_since(self.started),
            self.limit,
        )
    }

    /// Ready: the node is programmed and its BGP sessions are up.
    pub async fn ready(&self) -> Verdict {
        let Some(node) = self.node.get() else {
            let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            return Err(format!("not ready: {waiting}"));
        };
        let sessions = match &node.bgp {
            None => Vec::new(),
            Some(bgp) => {
                let peers = tokio::time::timeout(Duration::from_secs(2), bgp.handle.peers()).await;
                match peers {
                    Ok(Ok(peers)) => peers
                        .into_iter()
                        .map(|p| {
                            (
                                p.config.address.to_string(),
                                p.established_since.is_some(),
                                format!("{:?}", p.state),
                            )
                        })
                        .collect(),
                    Ok(Err(e)) => return Err(format!("not ready: BGP speaker: {e}")),
                    Err(_) => return Err("not ready: BGP speaker does not answer".into()),
                }
            }
        };
        readiness(node.is_ready(), &sessions)
    }
}

/// Dead when the loops have not turned for `limit`.
pub fn liveness(last_beat: Duration, now: Duration, limit: Duration) -> Verdict {
    let quiet = now.saturating_sub(last_beat);
    if quiet > limit {
        Err(format!(
            "dead: the agent's loops have not turned for {} s (limit {} s)",
            quiet.as_secs(),
            limit.as_secs()
        ))
    } else {
        Ok("ok".into())
    }
}

/// Ready once a pass has programmed the node and every wanted BGP session
/// (`(peer, established, state)`) is established.
pub fn readiness(programmed: bool, sessions: &[(String, bool, String)]) -> Verdict {
    if !programmed {
        return Err("not ready: the first pass has not programmed the node yet".into());
    }
    let down: Vec<String> = sessions
        .iter()
        .filter(|(_, up, _)| !up)
        .map(|(peer, _, state)| format!("{peer} ({state})"))
        .collect();
    if down.is_empty() {
        Ok(format!(
            "ready: {} BGP sessions established",
            sessions.len()
        ))
    } else {
        Err(format!(
            "not ready: BGP sessions not established: {}",
            down.join(", ")
        ))
    }
}

/// Serves the probes on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &health)).await;
        });
    }
}

/// One request, one answer, then the connection closes.
async fn answer(mut stream: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut words = request.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET" | "HEAD", "/healthz" | "/livez") => verdict(health.live(Instant::now())),
        ("GET" | "HEAD", "/readyz") => verdict(health.ready().await),
        ("GET" | "HEAD", _) => ("404 Not Found", "no such probe: /healthz or /readyz".into()),
        _ => ("405 Method Not Allowed", "GET only".into()),
    };
    let body = if method == "HEAD" {
        String::new()
    } else {
        body + "\n"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn verdict(v: Verdict) -> (&'static str, String) {
    match v {
        Ok(text) => ("200 OK", text),
        Err(text) => ("503 Service Unavailable", text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_until_the_loops_stop_for_the_limit() {
        let s = Duration::from_secs;
        assert!(liveness(s(100), s(130), s(60)).is_ok());
        let dead = liveness(s(100), s(161), s(60)).unwrap_err();
        assert!(dead.contains("61 s"), "{dead}");
    }

    #[test]
    fn ready_needs_the_first_pass_and_every_session() {
        let up = |peer: &str| (peer.to_string(), true, "Established".to_string());
        let down = |peer: &str| (peer.to_string(), false, "Active".to_string());
        assert!(readiness(false, &[]).unwrap_err().contains("first pass"));
        assert!(readiness(true, &[]).is_ok(), "static routing: no sessions");
        assert!(readiness(true, &[up("198.18.0.2"), up("198.18.0.3")]).is_ok());
        let e = readiness(true, &[up("198.18.0.2"), down("198.18.0.3")]).unwrap_err();
        assert!(
            e.contains("198.18.0.3 (Active)") && !e.contains("0.2"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn probes_answer_over_http() {
        let health = Health::new(Duration::from_secs(60));
        health.waiting_for("the Kubernetes API");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, health));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(address).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let live = get("/healthz").await;
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        let ready = get("/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        assert!(
            ready.ends_with("not ready: the Kubernetes API\n"),
            "{ready}"
        );
        assert!(get("/metrics").await.starts_with("HTTP/1.1 404 "));
        server.abort();
    }
}
