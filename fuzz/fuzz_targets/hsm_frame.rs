//! YubiHSM 1 frames, both sides: the first byte picks the command a response
//! answers; any bytes give a frame or an error, and what decodes re-encodes
//! to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ykhsm_yubihsm::wire::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        assert_eq!(&*req.encode().expect("a decoded request encodes"), data);
    }
    if let Some((&cmd, frame)) = data.split_first() {
        if let Ok(resp) = Response::decode(cmd, frame) {
            assert_eq!(resp.encode(), frame);
        }
    }
});
