//! Fuzz target: the HTTP response a guest's on-request returns (any status,
//! any header names and values, any body) becomes an HTTP response.
#![no_main]

use dormouse::server::response;
use dormouse::wit::Response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<(String, String)>, Vec<u8>)| {
    let (status, headers, body) = input;
    let r = response(Response {
        status,
        headers,
        body,
    });
    assert!(!r.status().is_informational());
    for name in [
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
    ] {
        assert!(
            r.headers().get(name).is_none(),
            "{name} came from the guest"
        );
    }
});
