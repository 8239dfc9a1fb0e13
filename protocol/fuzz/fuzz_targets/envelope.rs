//! The JSON envelope and binary-message parsers; a parsed envelope re-encoded must
//! parse back to the same routing fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stellar_protocol::binary::BinaryMessage;
use stellar_protocol::envelope::{Envelope, encode_event};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse(data) {
        let again = encode_event(&env.event, env.data.as_deref().unwrap_or("null"), env.room.as_deref());
        let back = Envelope::parse(&again).expect("re-encoded envelope parses");
        assert_eq!(back.event, env.event);
        assert_eq!(back.room, env.room);
    }
    let _ = BinaryMessage::parse(data);
});
