//! Entry points for the fuzz targets in `fuzz/` and for the replay of
//! their corpus (`ward-cli/tests/fuzz_regressions.rs`), feature
//! `fuzzing`: hostile bytes into the strict HTTP/1 reader and into the
//! `ward-mux` frame decoder. Not an API.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mux::{self, Version};
use crate::strict_h1::StrictH1;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// `data` as the bytes of an HTTP/1.1 connection, read through the strict
/// framing check to the end. Nothing may panic, and everything the check
/// passes on is a prefix-preserving rewrite of at most what came in plus
/// one replaced request head.
pub fn strict_h1(data: &[u8]) {
    runtime().block_on(async {
        let mut reader = StrictH1::new(data);
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), reader.read_to_end(&mut out)).await;
        assert!(
            out.len() <= data.len() + 1024,
            "{} bytes out of {}",
            out.len(),
            data.len()
        );
    });
}

/// `data` as what a peer sends on a `ward-mux` connection (the first byte
/// picks `/1` or `/2`), accepted and driven until the peer is done; every
/// stream it opens is read to its end and answered.
pub fn mux_frames(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let version = if first & 1 == 0 {
        Version::V1
    } else {
        Version::V2
    };
    runtime().block_on(async {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let (acceptor, driver) = mux::acceptor(ours, version);
        let driver = tokio::spawn(driver);
        let streams = tokio::spawn(async move {
            while let Some(mut st) = acceptor.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let _ = st.read_to_end(&mut buf).await;
                    let _ = st.write_all(b"ok").await;
                    let _ = st.shutdown().await;
                });
            }
        });
        let data = data.to_vec();
        let peer = tokio::spawn(async move {
            let _ = theirs.write_all(&data).await;
            let _ = theirs.shutdown().await;
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink).await;
        });
        // The peer closes after its bytes: the driver ends, or is given a
        // few seconds (a stream that waits for more).
        let _ = tokio::time::timeout(Duration::from_secs(3), driver).await;
        streams.abort();
        peer.abort();
    });
}
