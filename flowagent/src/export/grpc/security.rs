//! Transport security shared by the agent and the collector, on both the
//! server and the client side: TLS with rustls (`--tls-cert`/`--tls-key`,
//! `--tls-ca` for mutual TLS on servers and for the trust anchor on
//! clients), an optional bearer token (`--token-file`), and the rule that
//! plaintext is allowed only on loopback unless `--insecure`.
//!
//! Token checks compare in constant time and answer `UNAUTHENTICATED`; a
//! missing or wrong client certificate fails the TLS handshake, which the
//! client sees as `UNAVAILABLE`. Both are logged by the server and never stop it.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig},
};

/// Security setup errors; each names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{flag} {path}: {source}")]
    Read {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The settings do not fit together.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// TLS and token settings, as given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// `--tls-cert`: PEM certificate chain (server identity, or client identity for mTLS).
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-ca`: PEM CA; a server requires client certificates signed by
    /// it, a client trusts servers signed by it.
    pub tls_ca: Option<PathBuf>,
    /// `--token-file`: file whose first line is the bearer token.
    pub token_file: Option<PathBuf>,
    /// `--insecure`: allow plaintext on non-loopback addresses.
    pub insecure: bool,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

impl Security {
    /// Whether TLS is configured for serving (certificate and key given).
    fn server_tls_on(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Refuses plaintext listening on a non-loopback address without `--insecure`.
    pub fn check_listen(&self, addr: SocketAddr) -> Result<(), Error> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Invalid {
                flag: "--tls-cert",
                reason: "--tls-cert and --tls-key go together".into(),
            });
        }
        if !self.server_tls_on() && !addr.ip().is_loopback() && !self.insecure {
            return Err(Error::Invalid {
                flag: "--grpc-listen",
                reason: format!(
                    "{addr} is not loopback: give --tls-cert and --tls-key, or --insecure for plaintext"
                ),
            });
        }
        Ok(())
    }

    /// The server TLS configuration, when TLS is on.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, Error> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("--tls-ca", ca)?));
        }
        Ok(Some(tls))
    }

    /// Checks a collector URL: `http://` or `https://`, and plaintext only
    /// to a loopback host unless `--insecure`. Returns the host.
    pub fn check_connect<'a>(&self, url: &'a str) -> Result<(&'a str, bool), Error> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| Error::Invalid {
            flag: "--collector",
            reason: format!("{url:?}: expected http://HOST:PORT or https://HOST:PORT"),
        })?;
        let host = host_of(rest);
        match scheme {
            "http" => {
                let loopback =
                    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback && !self.insecure {
                    return Err(Error::Invalid {
                        flag: "--collector",
                        reason: format!(
                            "{url}: plaintext to a non-loopback host; use https:// or --insecure"
                        ),
                    });
                }
                Ok((host, false))
            }
            "https" => Ok((host, true)),
            other => Err(Error::Invalid {
                flag: "--collector",
                reason: format!("{url}: unknown scheme {other:?}, expected http or https"),
            }),
        }
    }

    /// The client TLS configuration for `url`, when it is `https://`.
    /// Refuses `http://` to a non-loopback host without `--insecure`.
    pub fn client_tls(&self, url: &str) -> Result<Option<ClientTlsConfig>, Error> {
        match self.check_connect(url)? {
            (_, false) => Ok(None),
            (host, true) => {
                let mut tls = ClientTlsConfig::new().domain_name(host.to_owned());
                if let Some(ca) = &self.tls_ca {
                    tls = tls.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
                }
                if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                    tls = tls.identity(Identity::from_pem(
                        read("--tls-cert", cert)?,
                        read("--tls-key", key)?,
                    ));
                }
                Ok(Some(tls))
            }
        }
    }

    /// The bearer token, when a token file is given (its first line, trimmed).
    pub fn token(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = String::from_utf8(read("--token-file", path)?).map_err(|_| Error::Invalid {
            flag: "--token-file",
            reason: format!("{} is not UTF-8", path.display()),
        })?;
        let token = text.lines().next().unwrap_or_default().trim().to_owned();
        if token.is_empty() || MetadataValue::try_from(format!("Bearer {token}")).is_err() {
            return Err(Error::Invalid {
                flag: "--token-file",
                reason: format!(
                    "{}: the first line must be a non-empty printable token",
                    path.display()
                ),
            });
        }
        Ok(Some(token))
    }
}

/// The host part of `host:port/path` (brackets of IPv6 literals removed).
fn host_of(authority: &str) -> &str {
    let authority = authority.split('/').next().unwrap_or_default();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Server-side token check, as a tonic interceptor: with a token configured,
/// every request must carry `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<[u8]>>,
}

impl TokenCheck {
    /// Checks for `token`, or lets everything through when `None`.
    pub fn new(token: Option<String>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}").into_bytes().into()),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, expected) {
            Ok(request)
        } else {
            let peer = request.remote_addr();
            log::warn!("rejected a request from {peer:?}: missing or wrong bearer token");
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// Client-side interceptor adding the bearer token.
#[derive(Clone)]
pub struct TokenAdd {
    value: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl TokenAdd {
    /// Adds `token` to every request, or nothing when `None`. Tokens are
    /// checked by [`Security::token`]; an unusable one adds nothing.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            value: token.and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok()),
        }
    }
}

impl tonic::service::Interceptor for TokenAdd {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    #[test]
    fn plaintext_only_on_loopback_unless_insecure() {
        let s = Security::default();
        assert!(s.check_listen("127.0.0.1:1".parse().unwrap()).is_ok());
        assert!(s.check_listen("[::1]:1".parse().unwrap()).is_ok());
        assert!(s.check_listen("0.0.0.0:1".parse().unwrap()).is_err());
        assert!(s.client_tls("http://127.0.0.1:5").unwrap().is_none());
        assert!(s.client_tls("http://[::1]:5").unwrap().is_none());
        assert!(s.client_tls("http://localhost:5").unwrap().is_none());
        assert!(s.client_tls("http://10.0.0.1:5").is_err());
        assert!(s.client_tls("ftp://127.0.0.1:5").is_err());
        assert!(s.client_tls("127.0.0.1:5").is_err());
        let insecure = Security {
            insecure: true,
            ..Security::default()
        };
        assert!(insecure.check_listen("0.0.0.0:1".parse().unwrap()).is_ok());
        assert!(insecure.client_tls("http://10.0.0.1:5").unwrap().is_none());
        assert!(
            s.client_tls("https://collector.example:5")
                .unwrap()
                .is_some()
        );
        assert_eq!(host_of("collector.example:5/x"), "collector.example");
    }

    #[test]
    fn token_check() {
        let mut check = TokenCheck::new(Some("s3cret".into()));
        let mut add = TokenAdd::new(Some("s3cret"));
        assert!(check.call(add.call(Request::new(())).unwrap()).is_ok());
        let wrong = TokenAdd::new(Some("s3cres"))
            .call(Request::new(()))
            .unwrap();
        assert_eq!(
            check.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(TokenCheck::new(None).call(Request::new(())).is_ok());
    }
}
