//! The server name a TLS client asks for, read from its ClientHello before
//! any byte goes upstream.
//!
//! A tunnel that is not terminated still has to stop an allowed `CONNECT`
//! from carrying a handshake for another name (domain fronting: `CONNECT
//! allowed.example:443`, then SNI `denied.example` to a CDN serving both).
//! The ClientHello is parsed by rustls' [`Acceptor`] — a parser that sees
//! hostile input every day — on a copy of the bytes, which are then sent on
//! unchanged.

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most the proxy reads while waiting for a whole ClientHello. Real ones
/// are a few kilobytes, post-quantum key shares included.
pub(crate) const MAX_HELLO: usize = 64 * 1024;

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// A ClientHello, naming a server or not.
    Hello(Option<String>),
    /// The start of one; read more.
    Incomplete,
    /// Not a TLS ClientHello.
    NotTls,
}

/// Parses `bytes` from the start of a connection.
pub(crate) fn parse(bytes: &[u8]) -> Parse {
    // A TLS connection starts with a handshake record (22); anything else
    // is refused before rustls sees it.
    match bytes.first() {
        None => return Parse::Incomplete,
        Some(22) => {}
        Some(_) => return Parse::NotTls,
    }
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Parse::NotTls,
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            Parse::Hello(accepted.client_hello().server_name().map(str::to_owned))
        }
        Ok(None) => Parse::Incomplete,
        Err(_) => Parse::NotTls,
    }
}

/// Why no ClientHello was read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HelloError {
    /// The bytes are not TLS (or more than [`MAX_HELLO`] of them).
    NotTls,
    /// The client closed or stalled before a whole ClientHello.
    Incomplete,
}

/// Reads from `io` into `buf` until a whole ClientHello is there, and
/// returns the server name it asks for. `buf` holds every byte read, to be
/// sent upstream.
pub(crate) async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Option<String>, HelloError> {
    let reading = async {
        let mut chunk = [0u8; 4096];
        loop {
            match parse(buf) {
                Parse::Hello(name) => return Ok(name),
                Parse::NotTls => return Err(HelloError::NotTls),
                Parse::Incomplete if buf.len() >= MAX_HELLO => return Err(HelloError::NotTls),
                Parse::Incomplete => {}
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(HelloError::Incomplete),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(timeout, reading)
        .await
        .unwrap_or(Err(HelloError::Incomplete))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a real rustls client, with SNI `name` or none.
    pub(crate) fn client_hello(name: Option<&str>) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.enable_sni = name.is_some();
        let server_name = rustls::pki_types::ServerName::try_from(name.unwrap_or("unused.example"))
            .expect("name")
            .to_owned();
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
        let mut out = Vec::new();
        client.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_the_server_name() {
        let hello = client_hello(Some("API.Example.com"));
        assert_eq!(parse(&hello), Parse::Hello(Some("api.example.com".into())));
    }

    #[test]
    fn a_hello_without_sni_names_nothing() {
        assert_eq!(parse(&client_hello(None)), Parse::Hello(None));
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let hello = client_hello(Some("api.example.com"));
        for len in 0..hello.len() {
            assert_eq!(parse(&hello[..len]), Parse::Incomplete, "prefix of {len}");
        }
    }

    #[test]
    fn garbage_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Parse::NotTls);
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.6\r\n"), Parse::NotTls);
        // A handshake record header followed by nonsense.
        let mut bad = vec![22, 3, 1, 0, 40, 1, 0, 0, 36];
        bad.extend_from_slice(&[0xff; 36]);
        assert_eq!(parse(&bad), Parse::NotTls);
        // A record claiming to be longer than TLS allows.
        assert_eq!(parse(&[22, 3, 1, 0xff, 0xff, 1]), Parse::NotTls);
    }

    #[test]
    fn a_hello_split_over_records_is_read() {
        // The same handshake message in two records, as a client may send.
        let hello = client_hello(Some("split.example"));
        let body = &hello[5..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&u16::try_from(part.len()).expect("len").to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(parse(&split), Parse::Hello(Some("split.example".into())));
    }

    #[tokio::test]
    async fn read_keeps_every_byte_and_stops_at_a_limit() {
        let hello = client_hello(Some("api.example.com"));
        let mut input = hello.as_slice();
        let mut buf = Vec::new();
        let name = read(&mut input, &mut buf, Duration::from_secs(5)).await;
        assert_eq!(name, Ok(Some("api.example.com".into())));
        assert_eq!(buf, hello);

        // Records of zero-length handshake fragments forever: never a hello.
        let endless: Vec<u8> = [22u8, 3, 1, 0, 0].repeat(MAX_HELLO);
        let mut input = endless.as_slice();
        let mut buf = Vec::new();
        let result = read(&mut input, &mut buf, Duration::from_secs(5)).await;
        assert!(result.is_err());
        assert!(buf.len() < MAX_HELLO + 4096);

        let mut closed: &[u8] = &hello[..10];
        let mut buf = Vec::new();
        assert_eq!(
            read(&mut closed, &mut buf, Duration::from_secs(5)).await,
            Err(HelloError::Incomplete)
        );
    }
}
