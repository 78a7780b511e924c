//! TLS server configuration from PEM files (rustls on ring), shared by the MQTT listeners and
//! the HTTP APIs.

use std::io;
use std::sync::Arc;

/// A rustls server config from a PEM certificate chain and private key. `keys` names the
/// config keys in errors (e.g. `("mqtt.tls_cert", "mqtt.tls_key")`).
pub fn server_config(cert_path: &str, key_path: &str, keys: (&str, &str)) -> io::Result<Arc<rustls::ServerConfig>> {
    let read = |path: &str| std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")));
    let certs = rustls_pemfile::certs(&mut read(cert_path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(format!("{}: {e}", keys.0)))?;
    let key = rustls_pemfile::private_key(&mut read(key_path)?.as_slice())
        .map_err(|e| io::Error::other(format!("{}: {e}", keys.1)))?
        .ok_or_else(|| io::Error::other(format!("{}: no private key in the file", keys.1)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::other(format!("{}/{}: {e}", keys.0, keys.1)))?;
    Ok(Arc::new(config))
}
