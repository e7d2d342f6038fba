//! The xDS bootstrap (gRFC A27): which control plane to ask, how, and who this client is.
//!
//! A bootstrap comes from the JSON file named by `GRPC_XDS_BOOTSTRAP`, from JSON held in
//! `GRPC_XDS_BOOTSTRAP_CONFIG` (the file wins when both are set, as in gRPC), or from code
//! ([`Bootstrap::new`], [`Bootstrap::from_json`]). The JSON is the one every gRPC reads:
//!
//! ```json
//! {
//!   "xds_servers": [{
//!     "server_uri": "127.0.0.1:18000",
//!     "channel_creds": [{"type": "insecure"}],
//!     "server_features": ["xds_v3"]
//!   }],
//!   "node": {
//!     "id": "orders-client-1",
//!     "cluster": "orders-client",
//!     "locality": {"region": "eu-west1", "zone": "eu-west1-b"}
//!   }
//! }
//! ```
//!
//! Only the first entry of `xds_servers` is used (gRFC A27; fallback to the next ones is
//! gRFC A71, not implemented). Of its `channel_creds`, the first type this client supports
//! wins: `insecure`, and with the crate's `tls` feature `tls` (gRFC A65's config:
//! `ca_certificate_file`, required here as system roots are not used yet, and optionally
//! `certificate_file` with `private_key_file` for mutual TLS; the files are read at every
//! connection to the control plane, so rotated files are picked up on reconnection).
//! `google_default` and other types are skipped, and a list with none supported is an
//! error. Unknown keys are ignored, as gRPC ignores them.

use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable naming a bootstrap file (gRFC A27).
pub const BOOTSTRAP_FILE_ENV: &str = "GRPC_XDS_BOOTSTRAP";
/// The environment variable holding the bootstrap JSON itself (gRFC A27).
pub const BOOTSTRAP_CONFIG_ENV: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// A bootstrap that cannot be used: where (a JSON path such as
/// `xds_servers[0].channel_creds`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("xDS bootstrap: {path}: {reason}")]
#[non_exhaustive]
pub struct BootstrapError {
    /// Where the problem is: a JSON path from the document's root, or the source
    /// (`GRPC_XDS_BOOTSTRAP=/etc/xds.json`) when the document could not be read.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl BootstrapError {
    fn new(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// How to secure the connection to the control plane (`channel_creds[].type`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelCreds {
    /// Plaintext HTTP/2 (`"insecure"`).
    Insecure,
    /// TLS (`"tls"`, gRFC A65), with the crate's `tls` feature.
    Tls(TlsCreds),
}

/// The files of `"tls"` channel credentials (gRFC A65).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsCreds {
    /// `ca_certificate_file`: PEM roots the control plane's certificate must chain to.
    pub ca_certificate_file: PathBuf,
    /// `certificate_file` and `private_key_file`: a PEM client certificate and its key,
    /// for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// One control plane (`xds_servers[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct XdsServer {
    /// Where it listens: `host:port`, or a URI with a scheme (`http://127.0.0.1:18000`).
    pub server_uri: String,
    /// The credentials chosen: the first supported entry of `channel_creds`.
    pub channel_creds: ChannelCreds,
    /// `server_features`, kept as given (`xds_v3`, `ignore_resource_deletion`, ...).
    pub server_features: Vec<String>,
}

impl XdsServer {
    /// Whether `server_features` lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.server_features.iter().any(|f| f == feature)
    }
}

/// Where this client runs (`node.locality`), sent to the control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Locality {
    /// `region`.
    pub region: String,
    /// `zone`.
    pub zone: String,
    /// `sub_zone`.
    pub sub_zone: String,
}

/// Who this client is (`node`), sent in the first request of every ADS stream.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Node {
    /// `id`: the client's identity at the control plane.
    pub id: String,
    /// `cluster`: the service this client belongs to.
    pub cluster: String,
    /// `locality`.
    pub locality: Option<Locality>,
    /// `metadata`: any JSON object, sent as a `google.protobuf.Struct`.
    pub metadata: Map<String, Value>,
}

/// A parsed bootstrap: the control plane and this client's node.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Bootstrap {
    /// The control plane: the first of `xds_servers`.
    pub server: XdsServer,
    /// This client.
    pub node: Node,
}

impl Bootstrap {
    /// A bootstrap from code: one control plane at `server_uri` over plaintext, and a
    /// node with this `id` (set the other fields directly).
    pub fn new(server_uri: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            server: XdsServer {
                server_uri: server_uri.into(),
                channel_creds: ChannelCreds::Insecure,
                server_features: vec!["xds_v3".to_owned()],
            },
            node: Node {
                id: node_id.into(),
                ..Node::default()
            },
        }
    }

    /// The bootstrap named by the environment: the file at `GRPC_XDS_BOOTSTRAP`, else
    /// the JSON in `GRPC_XDS_BOOTSTRAP_CONFIG`.
    ///
    /// # Errors
    /// Neither variable set, an unreadable file, or invalid contents (with the path).
    pub fn from_env() -> Result<Self, BootstrapError> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) reading variables through `var`, so it can be tested
    /// without touching the process's environment.
    fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, BootstrapError> {
        // An empty variable is an unset one, as in grpc-go.
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        if let Some(file) = var(BOOTSTRAP_FILE_ENV) {
            let path = Path::new(&file);
            let json = std::fs::read_to_string(path).map_err(|e| {
                BootstrapError::new(format!("{BOOTSTRAP_FILE_ENV}={}", path.display()), e)
            })?;
            return Self::from_json(&json);
        }
        match var(BOOTSTRAP_CONFIG_ENV) {
            Some(json) => match json.into_string() {
                Ok(json) => Self::from_json(&json),
                Err(_) => Err(BootstrapError::new(
                    BOOTSTRAP_CONFIG_ENV,
                    "is not valid UTF-8",
                )),
            },
            None => Err(BootstrapError::new(
                "(environment)",
                format!(
                    "neither {BOOTSTRAP_FILE_ENV} nor {BOOTSTRAP_CONFIG_ENV} is set: an \
                     xds:/// target needs a bootstrap"
                ),
            )),
        }
    }

    /// The bootstrap in the JSON file at `path`.
    ///
    /// # Errors
    /// An unreadable file, or invalid contents (with the JSON path).
    pub fn from_file(path: &Path) -> Result<Self, BootstrapError> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| BootstrapError::new(path.display().to_string(), e))?;
        Self::from_json(&json)
    }

    /// Parses bootstrap JSON.
    ///
    /// # Errors
    /// Malformed JSON, a field of the wrong type, no `xds_servers`, no supported
    /// `channel_creds`: the error names the JSON path (`xds_servers[0].server_uri`).
    pub fn from_json(json: &str) -> Result<Self, BootstrapError> {
        let root: Value = serde_json::from_str(json)
            .map_err(|e| BootstrapError::new("(document)", format!("invalid JSON: {e}")))?;
        let root = object(&root, "(document)")?;
        let servers = match root.get("xds_servers") {
            Some(Value::Array(servers)) if !servers.is_empty() => servers,
            Some(Value::Array(_)) | None => {
                return Err(BootstrapError::new(
                    "xds_servers",
                    "must list at least one control plane",
                ));
            }
            Some(_) => return Err(BootstrapError::new("xds_servers", "must be an array")),
        };
        // Later entries are fallbacks (gRFC A71), which this client does not use; they
        // are still checked, so a typo does not wait for the day it would matter.
        let mut parsed = Vec::with_capacity(servers.len());
        for (i, server) in servers.iter().enumerate() {
            parsed.push(parse_server(server, &format!("xds_servers[{i}]"))?);
        }
        let node = match root.get("node") {
            None | Some(Value::Null) => Node::default(),
            Some(node) => parse_node(node)?,
        };
        Ok(Self {
            server: parsed.swap_remove(0),
            node,
        })
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, BootstrapError> {
    value
        .as_object()
        .ok_or_else(|| BootstrapError::new(path, "must be a JSON object"))
}

/// An optional string field: absent or null is `None`.
fn string(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, BootstrapError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(BootstrapError::new(
            format!("{path}.{key}"),
            "must be a string",
        )),
    }
}

/// The `host:port` to dial for a `server_uri`, a gRPC target (gRFC A27): `host:port`,
/// `dns:///host:port` or `dns:host:port`; or an `http://`/`https://` URI as given.
/// Other schemes (`unix:`, `xds:`, a DNS authority) are refused by name rather than
/// retried for ever.
pub(crate) fn control_plane_address(uri: &str) -> Result<String, String> {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(uri.to_owned());
    }
    let host_port = if let Some(rest) = uri.strip_prefix("dns:///") {
        rest
    } else if let Some(rest) = uri.strip_prefix("dns://") {
        return Err(format!(
            "{uri:?}: a DNS server authority ({}) is not supported; use dns:///host:port",
            rest.split('/').next().unwrap_or_default()
        ));
    } else if let Some(rest) = uri.strip_prefix("dns:") {
        rest
    } else if let Some((scheme, _)) = uri.split_once(':')
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '+' || c == '-')
        && !uri.contains(']')
        && uri[scheme.len() + 1..].parse::<u16>().is_err()
    {
        return Err(format!(
            "{uri:?}: the scheme {scheme}: is not supported for the control plane; use \
             host:port or dns:///host:port"
        ));
    } else {
        uri
    };
    if host_port.is_empty() || host_port.contains('/') {
        return Err(format!("{uri:?} names no host:port"));
    }
    Ok(host_port.to_owned())
}

fn parse_server(value: &Value, path: &str) -> Result<XdsServer, BootstrapError> {
    let map = object(value, path)?;
    let server_uri = match string(map, "server_uri", path)? {
        Some(uri) if !uri.trim().is_empty() => uri,
        _ => {
            return Err(BootstrapError::new(
                format!("{path}.server_uri"),
                "is required (host:port of the control plane)",
            ));
        }
    };
    if let Err(why) = control_plane_address(&server_uri) {
        return Err(BootstrapError::new(format!("{path}.server_uri"), why));
    }
    let creds_path = format!("{path}.channel_creds");
    let creds = match map.get("channel_creds") {
        Some(Value::Array(creds)) if !creds.is_empty() => creds,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(BootstrapError::new(
                creds_path,
                "must list at least one credential type (for example {\"type\": \"insecure\"})",
            ));
        }
        Some(_) => return Err(BootstrapError::new(creds_path, "must be an array")),
    };
    let mut chosen = None;
    let mut seen = Vec::new();
    for (i, cred) in creds.iter().enumerate() {
        let cred_path = format!("{creds_path}[{i}]");
        let cred = object(cred, &cred_path)?;
        let Some(kind) = string(cred, "type", &cred_path)? else {
            return Err(BootstrapError::new(
                format!("{cred_path}.type"),
                "is required",
            ));
        };
        if let Some(config) = cred.get("config")
            && !config.is_object()
            && !config.is_null()
        {
            return Err(BootstrapError::new(
                format!("{cred_path}.config"),
                "must be a JSON object",
            ));
        }
        let supported = match kind.as_str() {
            "insecure" => Some(ChannelCreds::Insecure),
            "tls" if cfg!(feature = "tls") => Some(ChannelCreds::Tls(parse_tls(
                cred.get("config"),
                &format!("{cred_path}.config"),
            )?)),
            _ => None,
        };
        if let Some(supported) = supported {
            chosen = Some(supported);
            break;
        }
        seen.push(kind);
    }
    let channel_creds = chosen.ok_or_else(|| {
        BootstrapError::new(
            creds_path.clone(),
            format!(
                "no supported credential type (got {seen:?}; this client supports \"insecure\"{})",
                if cfg!(feature = "tls") {
                    " and \"tls\""
                } else {
                    ", and \"tls\" with the `tls` feature"
                }
            ),
        )
    })?;
    let features_path = format!("{path}.server_features");
    let server_features = match map.get("server_features") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.as_str().map(str::to_owned).ok_or_else(|| {
                    BootstrapError::new(format!("{features_path}[{i}]"), "must be a string")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(BootstrapError::new(features_path, "must be an array")),
    };
    Ok(XdsServer {
        server_uri,
        channel_creds,
        server_features,
    })
}

/// The `config` of `"tls"` credentials (gRFC A65).
fn parse_tls(config: Option<&Value>, path: &str) -> Result<TlsCreds, BootstrapError> {
    let empty = Map::new();
    let map = match config {
        None | Some(Value::Null) => &empty,
        Some(v) => object(v, path)?,
    };
    let ca_certificate_file = string(map, "ca_certificate_file", path)?.ok_or_else(|| {
        BootstrapError::new(
            format!("{path}.ca_certificate_file"),
            "is required (this client does not use the system's roots for the control plane)",
        )
    })?;
    let cert = string(map, "certificate_file", path)?;
    let key = string(map, "private_key_file", path)?;
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(BootstrapError::new(
                format!("{path}.private_key_file"),
                "is required with certificate_file",
            ));
        }
        (None, Some(_)) => {
            return Err(BootstrapError::new(
                format!("{path}.certificate_file"),
                "is required with private_key_file",
            ));
        }
    };
    Ok(TlsCreds {
        ca_certificate_file: PathBuf::from(ca_certificate_file),
        identity,
    })
}

fn parse_node(value: &Value) -> Result<Node, BootstrapError> {
    let map = object(value, "node")?;
    let locality = match map.get("locality") {
        None | Some(Value::Null) => None,
        Some(locality) => {
            let loc = object(locality, "node.locality")?;
            Some(Locality {
                region: string(loc, "region", "node.locality")?.unwrap_or_default(),
                zone: string(loc, "zone", "node.locality")?.unwrap_or_default(),
                sub_zone: string(loc, "sub_zone", "node.locality")?.unwrap_or_default(),
            })
        }
    };
    let metadata = match map.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(BootstrapError::new(
                "node.metadata",
                "must be a JSON object",
            ));
        }
    };
    Ok(Node {
        id: string(map, "id", "node")?.unwrap_or_default(),
        cluster: string(map, "cluster", "node")?.unwrap_or_default(),
        locality,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> BootstrapError {
        Bootstrap::from_json(json).expect_err("must be rejected")
    }

    #[test]
    fn parses_a_full_bootstrap() {
        let b = Bootstrap::from_json(
            r#"{
              "xds_servers": [
                {"server_uri": "127.0.0.1:18000",
                 "channel_creds": [{"type": "google_default"}, {"type": "insecure"}],
                 "server_features": ["xds_v3", "ignore_resource_deletion"]},
                {"server_uri": "backup:18000", "channel_creds": [{"type": "insecure"}]}
              ],
              "node": {"id": "n1", "cluster": "c1",
                       "locality": {"region": "r", "zone": "z", "sub_zone": "s"},
                       "metadata": {"k": "v"}},
              "certificate_providers": {}
            }"#,
        )
        .unwrap();
        assert_eq!(b.server.server_uri, "127.0.0.1:18000");
        // google_default is not supported here: the next supported type wins.
        assert_eq!(b.server.channel_creds, ChannelCreds::Insecure);
        assert!(b.server.has_feature("ignore_resource_deletion"));
        assert!(!b.server.has_feature("xds_v2"));
        assert_eq!(b.node.id, "n1");
        assert_eq!(b.node.cluster, "c1");
        let loc = b.node.locality.unwrap();
        assert_eq!(
            (
                loc.region.as_str(),
                loc.zone.as_str(),
                loc.sub_zone.as_str()
            ),
            ("r", "z", "s")
        );
        assert_eq!(b.node.metadata["k"], "v");
    }

    #[test]
    fn a_node_is_optional() {
        let b = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure"}]}]}"#,
        )
        .unwrap();
        assert_eq!(b.node, Node::default());
        assert!(b.server.server_features.is_empty());
    }

    #[test]
    fn errors_name_the_json_path() {
        let cases = [
            ("not json", "(document)"),
            ("[]", "(document)"),
            ("{}", "xds_servers"),
            (r#"{"xds_servers": []}"#, "xds_servers"),
            (r#"{"xds_servers": {}}"#, "xds_servers"),
            (r#"{"xds_servers": [1]}"#, "xds_servers[0]"),
            (
                r#"{"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}"#,
                "xds_servers[0].server_uri",
            ),
            (
                r#"{"xds_servers": [{"server_uri": 5, "channel_creds": []}]}"#,
                "xds_servers[0].server_uri",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1"}]}"#,
                "xds_servers[0].channel_creds",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{}]}]}"#,
                "xds_servers[0].channel_creds[0].type",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure", "config": 1}]}]}"#,
                "xds_servers[0].channel_creds[0].config",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "google_default"}]}]}"#,
                "xds_servers[0].channel_creds",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure"}], "server_features": [1]}]}"#,
                "xds_servers[0].server_features[0]",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure"}]}, {"server_uri": "h:2"}]}"#,
                "xds_servers[1].channel_creds",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure"}]}], "node": []}"#,
                "node",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure"}]}], "node": {"id": 1}}"#,
                "node.id",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure"}]}], "node": {"locality": {"zone": []}}}"#,
                "node.locality.zone",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "insecure"}]}], "node": {"metadata": "x"}}"#,
                "node.metadata",
            ),
        ];
        for (json, path) in cases {
            let e = err(json);
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("xDS bootstrap: {path}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn unsupported_creds_say_what_was_seen() {
        let e = err(
            r#"{"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "google_default"}]}]}"#,
        );
        assert!(e.reason.contains("google_default"), "{e}");
        assert!(e.reason.contains("insecure"), "{e}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_creds_name_their_files() {
        let json = |config: &str| {
            format!(
                r#"{{"xds_servers": [{{"server_uri": "h:1", "channel_creds": [{{"type": "tls", "config": {config}}}]}}]}}"#
            )
        };
        let b = Bootstrap::from_json(&json(
            r#"{"ca_certificate_file": "/ca.pem", "certificate_file": "/c.pem", "private_key_file": "/k.pem"}"#,
        ))
        .unwrap();
        assert_eq!(
            b.server.channel_creds,
            ChannelCreds::Tls(TlsCreds {
                ca_certificate_file: "/ca.pem".into(),
                identity: Some(("/c.pem".into(), "/k.pem".into())),
            })
        );
        let cases = [
            (
                "{}",
                "xds_servers[0].channel_creds[0].config.ca_certificate_file",
            ),
            (
                r#"{"ca_certificate_file": "/ca.pem", "certificate_file": "/c.pem"}"#,
                "xds_servers[0].channel_creds[0].config.private_key_file",
            ),
            (
                r#"{"ca_certificate_file": "/ca.pem", "private_key_file": "/k.pem"}"#,
                "xds_servers[0].channel_creds[0].config.certificate_file",
            ),
            (
                r#"{"ca_certificate_file": 1}"#,
                "xds_servers[0].channel_creds[0].config.ca_certificate_file",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(err(&json(config)).path, path, "{config}");
        }
    }

    #[test]
    fn the_environment_file_wins_over_the_config_variable() {
        let dir = std::env::temp_dir().join(format!("xds-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bootstrap.json");
        std::fs::write(
            &file,
            r#"{"xds_servers": [{"server_uri": "from-file:1", "channel_creds": [{"type": "insecure"}]}]}"#,
        )
        .unwrap();
        let config = r#"{"xds_servers": [{"server_uri": "from-config:1", "channel_creds": [{"type": "insecure"}]}]}"#;
        let vars = |file: Option<&Path>, config: Option<&str>| {
            let file = file.map(|f| f.as_os_str().to_owned());
            let config = config.map(std::ffi::OsString::from);
            move |name: &str| match name {
                BOOTSTRAP_FILE_ENV => file.clone(),
                BOOTSTRAP_CONFIG_ENV => config.clone(),
                _ => None,
            }
        };
        let both = Bootstrap::from_vars(vars(Some(&file), Some(config))).unwrap();
        assert_eq!(both.server.server_uri, "from-file:1");
        let only_config = Bootstrap::from_vars(vars(None, Some(config))).unwrap();
        assert_eq!(only_config.server.server_uri, "from-config:1");
        // An empty GRPC_XDS_BOOTSTRAP is unset, as in grpc-go.
        let empty_file = Bootstrap::from_vars(vars(Some(Path::new("")), Some(config))).unwrap();
        assert_eq!(empty_file.server.server_uri, "from-config:1");
        std::fs::remove_dir_all(&dir).unwrap();
        // The file named no longer exists: the error names the variable and the file.
        let gone = Bootstrap::from_vars(vars(Some(&file), Some(config))).unwrap_err();
        assert_eq!(gone.path, format!("GRPC_XDS_BOOTSTRAP={}", file.display()));
        let neither = Bootstrap::from_vars(vars(None, None)).unwrap_err();
        assert!(
            neither
                .reason
                .contains("neither GRPC_XDS_BOOTSTRAP nor GRPC_XDS_BOOTSTRAP_CONFIG"),
            "{neither}"
        );
        let bad = Bootstrap::from_vars(vars(None, Some("{}"))).unwrap_err();
        assert_eq!(bad.path, "xds_servers");
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let e = Bootstrap::from_file(Path::new("/nonexistent/xds-bootstrap.json")).unwrap_err();
        assert_eq!(e.path, "/nonexistent/xds-bootstrap.json");
    }

    #[test]
    fn a_file_is_read() {
        let dir = std::env::temp_dir().join(format!("xds-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bootstrap.json");
        std::fs::write(
            &file,
            r#"{"xds_servers": [{"server_uri": "h:7", "channel_creds": [{"type": "insecure"}]}], "node": {"id": "f"}}"#,
        )
        .unwrap();
        let b = Bootstrap::from_file(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            (b.server.server_uri.as_str(), b.node.id.as_str()),
            ("h:7", "f")
        );
    }

    #[test]
    fn code_bootstrap_is_plaintext_v3() {
        let b = Bootstrap::new("127.0.0.1:1", "me");
        assert_eq!(b.server.channel_creds, ChannelCreds::Insecure);
        assert!(b.server.has_feature("xds_v3"));
        assert_eq!(b.node.id, "me");
    }

    #[test]
    fn server_uri_is_a_grpc_target_of_a_host_and_port() {
        for (uri, dialled) in [
            ("127.0.0.1:18000", "127.0.0.1:18000"),
            ("cp.mesh.local:443", "cp.mesh.local:443"),
            ("[::1]:18000", "[::1]:18000"),
            ("dns:///cp.mesh.local:443", "cp.mesh.local:443"),
            ("dns:cp.mesh.local:443", "cp.mesh.local:443"),
            ("https://cp.mesh.local", "https://cp.mesh.local"),
        ] {
            assert_eq!(control_plane_address(uri).as_deref(), Ok(dialled), "{uri}");
        }
        for uri in [
            "unix:///etc/istio/proxy/XDS",
            "unix-abstract:xds",
            "xds:///cp",
            "dns://8.8.8.8/cp:443",
            "dns:///",
        ] {
            assert!(control_plane_address(uri).is_err(), "{uri}");
        }
        let error = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "unix:///x", "channel_creds": [{"type": "insecure"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(error.path, "xds_servers[0].server_uri");
        assert!(error.reason.contains("unix:"), "{error}");
    }
}
