//! The wire protocol between clients, servers and the manager.
//!
//! Two layers: [`frame`] delimits and checks byte frames (version, length,
//! crc32, size limit); [`msg`] is the typed message carried in a frame's
//! payload (serde + bincode, with a decode size limit).

pub mod frame;
pub mod msg;

pub use frame::{FrameError, FRAME_HEADER_LEN, FRAME_PAYLOAD_LEN_MAX, PROTOCOL_VERSION};
pub use msg::{client_may_send, decode_msg, encode_msg, ExecError, Msg, ServerAction};
