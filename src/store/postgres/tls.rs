//! TLS to PostgreSQL servers (rustls through tokio-rustls), chosen by the
//! store URL's libpq parameters `sslmode` and `sslrootcert`:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | |
//! | `allow` | only if the server refuses the connection without it | not checked |
//! | `prefer` (default, as libpq) | if the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | as `verify-ca`, and issued for the URL's host |
//!
//! `verify-ca` and `verify-full` need `sslrootcert` (a PEM file of CA
//! certificates): custos reads no default trust store. `sslcert` and
//! `sslkey` (PEM files, given together) present a client certificate to a
//! server that asks for one. The same URL goes to the libpq tools
//! (`pg_dump`, `psql`), which read the same parameters. SCRAM is bound to
//! the TLS session (`tls-server-end-point`) when the server offers it.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What a connection asks of TLS (the URL's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The libpq name of a mode.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// What tokio-postgres is told first: whether TLS may be skipped
    /// (`allow` tries without, then with; see `PgConn::connect`).
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable | SslMode::Allow => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// A TLS client configuration for one store, built once from its URL.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTls")
    }
}

/// Why a TLS configuration cannot be built (names the file, never a key).
#[derive(Debug)]
pub struct TlsSetupError(pub String);

impl PgTls {
    /// The configuration for `mode` with the CA certificates of `root`
    /// (`sslrootcert`) and the client certificate of `client`, if given.
    pub fn new(
        mode: SslMode,
        root: Option<&Path>,
        client: Option<&ClientCert>,
    ) -> Result<PgTls, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match root {
            Some(p) => Some(Arc::new(load_roots(p)?)),
            None => None,
        };
        let chain = match (mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsSetupError(format!(
                    "sslmode={} needs sslrootcert (a PEM file of the CA certificates that sign the server's); custos reads no default trust store",
                    if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
                )))
            }
            (SslMode::VerifyFull | SslMode::VerifyCa | SslMode::Require, Some(roots)) => Some(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError(format!("building the certificate verifier: {e}")))?,
            ),
            (_, _) => None,
        };
        let verifier = Arc::new(ServerCheck {
            chain,
            name: mode == SslMode::VerifyFull,
            provider: provider.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let (chain, key) = c.load()?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    TlsSetupError(format!(
                        "sslcert {} and sslkey {}: {e}",
                        c.cert.display(),
                        c.key.display()
                    ))
                })?
            }
        };
        Ok(PgTls {
            config: Arc::new(config),
        })
    }
}

/// A client certificate (`sslcert`) and its private key (`sslkey`), PEM
/// files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCert {
    /// Reads the certificate chain and the key. The key must not be
    /// readable by others (as libpq requires: mode 0600 or less, or 0640
    /// when root owns it), since the same file goes to `pg_dump`; errors
    /// name the files, never a key.
    fn load(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
        let key = |why: String| TlsSetupError(format!("sslkey {}: {why}", self.key.display()));
        let chain = read_certificates("sslcert", &self.cert)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(&self.key).map_err(|e| key(e.to_string()))?;
            let mode = meta.mode() & 0o777;
            let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
            if mode & !allowed != 0 {
                return Err(key(format!(
                    "has mode {mode:04o}, readable by others; make it 0600 (libpq refuses it too)"
                )));
            }
        }
        let pem =
            zeroize::Zeroizing::new(std::fs::read(&self.key).map_err(|e| key(e.to_string()))?);
        let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
            key("holds no unencrypted PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1; encrypted keys and sslpassword are not supported)".into())
        })?;
        Ok((chain, private))
    }
}

/// The certificates of a PEM file, at least one; errors name the URL
/// parameter (`param`) and the file.
fn read_certificates(
    param: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let named = |why: String| TlsSetupError(format!("{param} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| named(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(format!("not a PEM file of certificates ({e})")))?;
    if certs.is_empty() {
        return Err(named("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let named = |why: String| TlsSetupError(format!("sslrootcert {}: {why}", path.display()));
    let certs = read_certificates("sslrootcert", path)?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| named(format!("a certificate cannot be used as a CA ({e})")))?;
    }
    Ok(roots)
}

/// How the server's certificate is checked: against the CAs of
/// `sslrootcert` (`chain`), with or without its name (`verify-full` or
/// `verify-ca`), or not at all (`prefer` and `require` without
/// `sslrootcert`: the channel is encrypted but the server is not
/// authenticated, as with libpq). The handshake's signatures are always
/// checked against the certificate presented.
#[derive(Debug)]
struct ServerCheck {
    chain: Option<Arc<WebPkiServerVerifier>>,
    name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The prefix of every TLS handshake failure's text, so that the store can
/// tell it from an unreachable server.
pub const HANDSHAKE_FAILED: &str = "TLS handshake with the server failed";

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{HANDSHAKE_FAILED}: host `{domain}` is not a TLS server name ({e})"),
            )
        })?;
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector
                .connect(self.name, stream)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{HANDSHAKE_FAILED}: {e}")))?;
            Ok(PgTlsStream(Box::new(tls)))
        })
    }
}

/// An encrypted connection to the server.
pub struct PgTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate, so that SCRAM-SHA-256-PLUS ties the password exchange
    /// to this TLS session and a man in the middle cannot relay it. None
    /// for a certificate whose signature names no hash this knows (as the
    /// server then offers no -PLUS either).
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| end_point_hash(cert.as_ref()))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// The `tls-server-end-point` channel binding of a DER certificate: its
/// hash under the hash function of its signature algorithm, SHA-256 for
/// MD5 and SHA-1 (RFC 5929, 4.1). `None` for other algorithms (Ed25519,
/// RSA-PSS), for which the rule names no hash.
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::digest;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let oid = signature_algorithm(der)?;
    let hash = match oid.split_last()? {
        // md5WithRSAEncryption, sha1WithRSAEncryption
        (4 | 5, arc) if arc == RSA => &digest::SHA256,
        (11, arc) if arc == RSA => &digest::SHA256,
        (12, arc) if arc == RSA => &digest::SHA384,
        (13, arc) if arc == RSA => &digest::SHA512,
        _ if oid == ECDSA_SHA1 => &digest::SHA256,
        (2, arc) if arc == ECDSA_SHA2 => &digest::SHA256,
        (3, arc) if arc == ECDSA_SHA2 => &digest::SHA384,
        (4, arc) if arc == ECDSA_SHA2 => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(hash, der).as_ref().to_vec())
}

/// The signature algorithm's OID (its content bytes) of a DER
/// certificate: `SEQUENCE { tbsCertificate, SEQUENCE { OID, ... }, ... }`.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der_tlv(der)? else {
        return None;
    };
    let (_, _, rest) = der_tlv(cert)?;
    let (0x30, algorithm, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// One DER element: its tag, its content and what follows it.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &x| l << 8 | x as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The TLS parameters of a libpq URL, and the URL without them for
/// tokio-postgres (which knows neither `verify-*` nor the file
/// parameters).
#[derive(Debug)]
pub struct UrlTls {
    /// The URL tokio-postgres gets.
    pub driver: url::Url,
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root: Option<PathBuf>,
    /// `sslcert` with `sslkey`.
    pub client: Option<ClientCert>,
}

/// Splits the TLS parameters off a libpq URL. A relative file path is
/// relative to the working folder, as for libpq.
pub fn split_url(url: &url::Url) -> Result<UrlTls, String> {
    let mut mode = SslMode::Prefer;
    let mut root = None;
    let (mut cert, mut key) = (None, None);
    let mut rest = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                mode = SslMode::parse(&v).ok_or_else(|| {
                    format!("sslmode `{v}` is not one of disable, allow, prefer, require, verify-ca, verify-full")
                })?;
            }
            "sslrootcert" => root = Some(PathBuf::from(v.as_ref())),
            "sslcert" => cert = Some(PathBuf::from(v.as_ref())),
            "sslkey" => key = Some(PathBuf::from(v.as_ref())),
            "sslpassword" | "sslcrl" | "sslcrldir" | "sslsni" => {
                return Err(format!("`{k}` is not supported"));
            }
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
        (None, None) => None,
        // libpq would look for ~/.postgresql/postgresql.{crt,key}; custos
        // reads only the files named.
        (Some(_), None) => {
            return Err("`sslcert` needs `sslkey` (the client certificate's private key)".into())
        }
        (None, Some(_)) => return Err("`sslkey` needs `sslcert` (the client certificate)".into()),
    };
    let mut driver = url.clone();
    driver.set_query(None);
    if !rest.is_empty() {
        driver.query_pairs_mut().extend_pairs(rest);
    }
    Ok(UrlTls {
        driver,
        mode,
        root,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(u: &str) -> Result<(String, SslMode, Option<PathBuf>), String> {
        split_url(&url::Url::parse(u).unwrap()).map(|t| (t.driver.to_string(), t.mode, t.root))
    }

    #[test]
    fn the_url_keeps_what_tokio_postgres_reads_and_gives_the_rest_to_tls() {
        let (d, m, r) = split(
            "postgres://u@db:5432/crm?connect_timeout=5&sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(d, "postgres://u@db:5432/crm?connect_timeout=5");
        assert_eq!(m, SslMode::VerifyFull);
        assert_eq!(r, Some(PathBuf::from("/ca.pem")));
        let (d, m, r) = split("postgres://u@db/crm").unwrap();
        assert_eq!(
            (d.as_str(), m, r),
            ("postgres://u@db/crm", SslMode::Prefer, None)
        );
        for (mode, want) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
        ] {
            assert_eq!(
                split(&format!("postgres://u@db/crm?sslmode={mode}"))
                    .unwrap()
                    .1,
                want
            );
        }
        assert_eq!(
            split("postgres://u@db/crm?sslmode=allow").unwrap().1,
            SslMode::Allow
        );
        let e = split("postgres://u@db/crm?sslmode=sometimes").unwrap_err();
        assert!(e.contains("sometimes") && e.contains("allow"), "{e}");
        let e = split("postgres://u@db/crm?sslpassword=x").unwrap_err();
        assert!(
            e.contains("sslpassword") && e.contains("not supported"),
            "{e}"
        );
        let e = split("postgres://u@db/crm?sslcert=/c.pem").unwrap_err();
        assert!(e.contains("needs `sslkey`"), "{e}");
        let e = split("postgres://u@db/crm?sslkey=/k.pem").unwrap_err();
        assert!(e.contains("needs `sslcert`"), "{e}");
        let t = split_url(
            &url::Url::parse("postgres://u@db/crm?sslcert=/c.pem&sslkey=/k.pem&sslmode=require")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(t.driver.as_str(), "postgres://u@db/crm");
        assert_eq!(
            t.client,
            Some(ClientCert {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
    }

    #[test]
    fn the_end_point_hash_follows_the_certificate_signature() {
        use aws_lc_rs::digest;
        // A self-signed certificate whose signature is `alg`'s.
        let signed = |alg: &'static rcgen::SignatureAlgorithm| -> Vec<u8> {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["db".to_string()]).unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        for (alg, hash) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, &digest::SHA256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, &digest::SHA384),
        ] {
            let der = signed(alg);
            assert_eq!(
                end_point_hash(&der).unwrap(),
                digest::digest(hash, &der).as_ref()
            );
            // Nothing that is not a whole certificate.
            assert_eq!(end_point_hash(&der[..der.len() / 2]), None);
        }
        // Ed25519 names no hash: no binding.
        assert_eq!(end_point_hash(&signed(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point_hash(b"not DER"), None);
    }

    #[test]
    fn a_root_file_that_holds_no_certificate_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let e = PgTls::new(SslMode::VerifyFull, Some(&p), None)
            .unwrap_err()
            .0;
        assert!(e.contains("ca.pem") && e.contains("CERTIFICATE"), "{e}");
        let e = PgTls::new(
            SslMode::VerifyCa,
            Some(&tmp.path().join("absent.pem")),
            None,
        )
        .unwrap_err()
        .0;
        assert!(e.contains("absent.pem"), "{e}");
        // Without verification no file is needed.
        PgTls::new(SslMode::Require, None, None).unwrap();
    }
}
