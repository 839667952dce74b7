//! weftctl as a library: the lab (namespaces, agents, pods via weft-cni) and
//! the reachability probes, for the integration tests to reuse.

pub mod agent_api;
pub mod lab;
pub mod trace;

/// An error and its causes on one line, like `{:#}`, but without a cause
/// that merely repeats the text before it (tonic and io errors often
/// print their source inside their own message).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_drops_repeats() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(io)
            .context("transport error: entity not found")
            .context("connecting");
        assert_eq!(
            super::error_chain(&e),
            "connecting: transport error: entity not found"
        );
    }
}
