//! Key servers on loopback for the tests: raw HTTP/1.1 written by hand, so that a test can
//! answer as no well-behaved server would (dripping, lying, redirecting), optionally behind TLS
//! with a self-signed certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A public P-256 JWK of a freshly generated key, named `kid`.
pub fn p256_jwk(kid: &str) -> Value {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    json!({
        "kty": "EC",
        "crv": "P-256",
        "kid": kid,
        "use": "sig",
        "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    })
}

/// A JWKS document holding P-256 keys with these kids.
pub fn jwks(kids: &[&str]) -> String {
    json!({"keys": kids.iter().map(|kid| p256_jwk(kid)).collect::<Vec<_>>()}).to_string()
}

/// What the server does with one request.
#[derive(Clone)]
pub enum Reply {
    /// Writes the status line, the headers (each "Name: value") and the body, with a
    /// Content-Length, then closes.
    Full {
        status: &'static str,
        headers: Vec<String>,
        body: Vec<u8>,
    },
    /// Writes the head as given (no Content-Length added), then `total` bytes of body in
    /// pieces of `piece`, `pause` apart, then closes.
    Stream {
        head: String,
        piece: usize,
        total: usize,
        pause: Duration,
    },
    /// Writes these bytes as they are, then closes.
    Raw(Vec<u8>),
    /// Says nothing for this long, then closes.
    Silent(Duration),
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::Full {
            status: "200 OK",
            headers: vec!["Content-Type: application/json".into()],
            body: body.into(),
        }
    }

    pub fn ok_with(header: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::Full {
            status: "200 OK",
            headers: vec!["Content-Type: application/json".into(), header.into()],
            body: body.into(),
        }
    }

    pub fn status(status: &'static str) -> Self {
        Self::Full {
            status,
            headers: Vec::new(),
            body: b"no".to_vec(),
        }
    }
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// A server that answers its n-th request (from 0) with `script(n)`.
pub struct KeyServer {
    pub address: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyServer {
    pub async fn http(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        Self::start(None, Arc::new(script)).await
    }

    pub async fn https(
        tls: &TestCertificate,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start(Some(tls.acceptor()), Arc::new(script)).await
    }

    async fn start(tls: Option<TlsAcceptor>, script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = {
            let (connections, requests) = (Arc::clone(&connections), Arc::clone(&requests));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (tls, script, requests) =
                        (tls.clone(), Arc::clone(&script), Arc::clone(&requests));
                    tokio::spawn(async move {
                        match tls {
                            None => serve(stream, &script, &requests).await,
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    serve(stream, &script, &requests).await;
                                }
                            }
                        }
                    });
                }
            })
        };
        Self {
            address,
            connections,
            requests,
            task,
        }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.address.port())
    }

    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.address.port())
    }

    /// Requests read in full so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far, whether or not a request followed.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request head and answers it; write errors end the connection quietly, as the
/// client is expected to hang up on some replies.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    script: &Script,
    requests: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let index = requests.fetch_add(1, Ordering::SeqCst);
    let _ = answer(&mut stream, script(index)).await;
    let _ = stream.shutdown().await;
}

async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            for header in headers {
                head.push_str(&header);
                head.push_str("\r\n");
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Reply::Stream {
            head,
            piece,
            total,
            pause,
        } => {
            stream.write_all(head.as_bytes()).await?;
            stream.flush().await?;
            let chunk = vec![b' '; piece];
            let mut sent = 0;
            while sent < total {
                stream.write_all(&chunk).await?;
                stream.flush().await?;
                sent += piece;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        Reply::Raw(bytes) => stream.write_all(&bytes).await?,
        Reply::Silent(pause) => tokio::time::sleep(pause).await,
    }
    stream.flush().await
}

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key.
pub struct TestCertificate {
    pub der: Vec<u8>,
    key: Vec<u8>,
}

impl TestCertificate {
    pub fn new() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        Self {
            der: certified.cert.der().to_vec(),
            key: certified.signing_key.serialize_der(),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}
