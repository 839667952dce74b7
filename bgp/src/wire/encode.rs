//! Encoding (written by the codec's owner).
use super::*;

/// Encodes one message, header included.
pub fn encode(_message: &Message, _ctx: CodecContext) -> Vec<u8> {
    todo!("codec")
}
