//! The kernel's refusals, in one shape for every netlink shell: what was
//! asked, of which object, and what the kernel answered.

/// The kernel refused a request (`op` on `object`), e.g. "creating veth
/// weft0a1b2c3d: File exists".
#[derive(Debug, thiserror::Error)]
#[error("{op} {object}: {source}")]
pub struct KernelError {
    pub op: &'static str,
    pub object: String,
    #[source]
    pub source: rtnetlink::Error,
}

impl KernelError {
    pub(crate) fn new(
        op: &'static str,
        object: impl Into<String>,
        source: rtnetlink::Error,
    ) -> Self {
        KernelError {
            op,
            object: object.into(),
            source,
        }
    }

    /// The errno of the kernel's answer, if it was an error reply.
    pub fn errno(&self) -> Option<i32> {
        errno(&self.source)
    }
}

/// The errno of a netlink error reply, positive (`EEXIST`, `ENODEV`, ...).
pub(crate) fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}
