//! The daemon's socket protocol: any bytes as a frame, and any body as a
//! request or a response, give a value or an error; what decodes re-encodes
//! to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ykhsm_proto::frame::{self, MAX_UNPRIVILEGED_FRAME};
use ykhsm_proto::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = frame::read_frame(&mut &data[..], MAX_UNPRIVILEGED_FRAME) {
        let _ = Request::decode(&body);
    }
    if let Ok(req) = Request::decode(data) {
        assert_eq!(&*req.encode(), data);
    }
    if let Ok(resp) = Response::decode(data) {
        assert_eq!(resp.encode(), data);
    }
});
