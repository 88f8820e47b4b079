//! ward's gRPC API: the `ward.v1` protobuf package and its generated tonic
//! client and server code.
//!
//! ```no_run
//! use ward_api::v1::identity_client::IdentityClient;
//! ```

/// The `ward.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("ward.v1");
}

/// The sample `ward.demo.v1` service run by `ward demo` and the tests.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod demo {
    tonic::include_proto!("ward.demo.v1");
}

use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

/// A gRPC channel to the control plane at `addr` (`host:port`) over TLS
/// with `tls` (which decides how the server is verified and which client
/// certificate is shown). HTTP/2 is negotiated by ALPN; the channel
/// reconnects by itself when the connection drops.
pub async fn connect(
    addr: &str,
    tls: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let addr = addr.to_string();
    let connector = tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            // The name is not used for verification (the SPIFFE ID is);
            // it only fills the SNI field.
            let name = rustls_pki_types::ServerName::try_from("ward-server")
                .map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://ward-server")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
}
