//! The gRPC shell: one weft-agent connection per invocation, with the
//! agent's status codes mapped to CNI errors.

use std::path::Path;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use weft_proto::AgentClient;
use weft_proto::v1::{
    AllocateAddressReply, AllocateAddressRequest, Attachment, CheckEndpointRequest, Endpoint,
    GarbageCollectReply, GarbageCollectRequest, RegisterEndpointRequest, ReleaseEndpointRequest,
    StatusReply, StatusRequest,
};

use crate::error::CniError;

/// A connected agent client.
pub struct Agent {
    client: AgentClient<Channel>,
    socket: String,
}

/// Maps an agent's status to the CNI error a runtime can act on:
/// unavailability and timeouts are "try again later" (11), a full pod CIDR
/// is Weft's code 100, anything else is an agent failure (103).
///
/// A connection that breaks mid-call (the agent died or restarted) comes
/// back from tonic as `Unknown` with the local transport error as its
/// source; a status the agent itself sent never has a source. The former is
/// a reason to retry, like a refused connection.
pub fn map_status(rpc: &'static str, socket: &str, status: &tonic::Status) -> CniError {
    let broken_transport =
        status.code() == Code::Unknown && std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            CniError::AgentUnavailable {
                socket: socket.to_string(),
                reason: format!("{rpc}: {}", status.message()),
            }
        }
        Code::Unknown if broken_transport => CniError::AgentUnavailable {
            socket: socket.to_string(),
            reason: format!("{rpc}: connection to the agent broke: {}", status.message()),
        },
        Code::ResourceExhausted => CniError::AddressesExhausted {
            message: status.message().to_string(),
        },
        code => CniError::Agent {
            rpc,
            code: format!("{code:?}"),
            message: status.message().to_string(),
        },
    }
}

fn attachment(container_id: &str, ifname: &str) -> Option<Attachment> {
    Some(Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    })
}

impl Agent {
    /// Connects to the agent's unix socket; failure is code 11.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, CniError> {
        let display = socket.display().to_string();
        let client =
            weft_proto::connect(socket, timeout)
                .await
                .map_err(|e| CniError::AgentUnavailable {
                    socket: display.clone(),
                    reason: error_chain(&e),
                })?;
        Ok(Agent {
            client,
            socket: display,
        })
    }

    fn err(&self, rpc: &'static str) -> impl Fn(tonic::Status) -> CniError + '_ {
        move |status| map_status(rpc, &self.socket, &status)
    }

    /// Reserves (or finds again) the attachment's address.
    pub async fn allocate(
        &mut self,
        container_id: &str,
        ifname: &str,
        pod_name: &str,
        pod_namespace: &str,
    ) -> Result<AllocateAddressReply, CniError> {
        let request = AllocateAddressRequest {
            attachment: attachment(container_id, ifname),
            pod_name: pod_name.to_string(),
            pod_namespace: pod_namespace.to_string(),
        };
        let reply = self.client.allocate_address(request).await;
        reply
            .map(tonic::Response::into_inner)
            .map_err(self.err("AllocateAddress"))
    }

    /// Tells the agent the veth is wired.
    pub async fn register(&mut self, request: RegisterEndpointRequest) -> Result<(), CniError> {
        let reply = self.client.register_endpoint(request).await;
        reply.map(drop).map_err(self.err("RegisterEndpoint"))
    }

    /// Releases the attachment's address; Ok(false) if the agent held none.
    pub async fn release(&mut self, container_id: &str, ifname: &str) -> Result<bool, CniError> {
        let request = ReleaseEndpointRequest {
            attachment: attachment(container_id, ifname),
        };
        let reply = self.client.release_endpoint(request).await;
        reply
            .map(|r| r.into_inner().released)
            .map_err(self.err("ReleaseEndpoint"))
    }

    /// The agent's record of the attachment, None if it has none.
    pub async fn check(
        &mut self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Endpoint>, CniError> {
        let request = CheckEndpointRequest {
            attachment: attachment(container_id, ifname),
        };
        match self.client.check_endpoint(request).await {
            Ok(reply) => Ok(reply.into_inner().endpoint),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(map_status("CheckEndpoint", &self.socket, &status)),
        }
    }

    /// Releases everything not in `valid`.
    pub async fn garbage_collect(
        &mut self,
        valid: Vec<(String, String)>,
    ) -> Result<GarbageCollectReply, CniError> {
        let valid = valid
            .into_iter()
            .map(|(container_id, ifname)| Attachment {
                container_id,
                ifname,
            })
            .collect();
        let reply = self
            .client
            .garbage_collect(GarbageCollectRequest { valid })
            .await;
        reply
            .map(tonic::Response::into_inner)
            .map_err(self.err("GarbageCollect"))
    }

    /// The agent's readiness.
    pub async fn status(&mut self) -> Result<StatusReply, CniError> {
        let reply = self.client.status(StatusRequest {}).await;
        reply
            .map(tonic::Response::into_inner)
            .map_err(self.err("Status"))
    }
}

/// An error with its sources, on one line (tonic's transport error alone
/// says only "transport error").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        // tonic repeats its source in its own message; say things once.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_status_codes_map_to_cni_codes() {
        let code = |c: Code| map_status("Rpc", "/s", &tonic::Status::new(c, "m")).code();
        assert_eq!(code(Code::Unavailable), 11);
        assert_eq!(code(Code::DeadlineExceeded), 11);
        assert_eq!(code(Code::ResourceExhausted), 100);
        assert_eq!(code(Code::InvalidArgument), 103);
        assert_eq!(code(Code::Internal), 103);
        // The agent answered Unknown: its failure, not a reason to retry.
        assert_eq!(code(Code::Unknown), 103);
        // The connection broke mid-call: try again later.
        let broken = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(map_status("Rpc", "/s", &broken).code(), 11);
    }
}
