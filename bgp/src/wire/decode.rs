//! Decoding (written by the codec's owner).
use super::*;

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub length: u16,
    pub message_type: u8,
}

/// Why bytes are not a message: the NOTIFICATION to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed BGP message: NOTIFICATION {}/{}", .0.code, .0.subcode)]
pub struct DecodeError(pub Notification);

/// Reads a header from at least `HEADER_LEN` bytes.
pub fn decode_header(_bytes: &[u8]) -> Result<Header, DecodeError> {
    todo!("codec")
}

/// Decodes one whole message (header included).
pub fn decode(_bytes: &[u8], _ctx: CodecContext) -> Result<Message, DecodeError> {
    todo!("codec")
}
