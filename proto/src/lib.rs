//! The weft-agent's local gRPC API and the unix-socket transport both ends use.

pub mod v1 {
    tonic::include_proto!("weft.v1");
}

pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connects to an agent's unix socket. The URI is a placeholder that tonic
/// requires; the connector ignores it and dials `socket`.
pub async fn connect(
    socket: &Path,
    timeout: Duration,
) -> Result<AgentClient<tonic::transport::Channel>, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://weft-agent.invalid")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}
